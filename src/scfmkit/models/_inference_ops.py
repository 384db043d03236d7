"""Small inference-only helpers shared by the model forwards (pure torch, no AnnData).

- :func:`add_fresh`: a residual sum computed in place on a fresh output.
- :func:`autocast_weights`: a module's linear weights stored in the autocast dtype once, instead of being cast on
  every call.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["add_fresh", "autocast_weights"]


def add_fresh(y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``y + r``, in place on ``y`` (a fresh output nobody else holds); the same values as ``y + r``.

    With mixed dtypes (under autocast a linear output is bf16 and the residual float32), both are first cast to the
    promoted dtype, which is what ``y + r`` computes in: torch's mixed-dtype add is about 6x slower on the CPU than
    a cast and a same-dtype add (0.64 ms against 0.11 ms for 1,092 x 256 on one thread).
    """
    if y.dtype == r.dtype:
        return y.add_(r)
    dtype = torch.promote_types(y.dtype, r.dtype)
    return y.to(dtype).add_(r.to(dtype))


def autocast_weights(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` with every :class:`~torch.nn.Linear`'s weight and bias stored in ``dtype``.

    For inference under ``torch.autocast(dtype=dtype)`` only: autocast casts a linear layer's float32 weight and bias
    to ``dtype`` on every call (it caches the cast only for weights that require grad, in a grad-enabled region), so
    storing them cast gives the same values without the per-call copies. Everything else (embeddings, layer norms)
    stays as it is, as autocast runs those in float32. Outside autocast the copy's linear layers need ``dtype`` inputs.
    """
    out = copy.deepcopy(module)
    for layer in out.modules():
        if isinstance(layer, nn.Linear):
            layer.to(dtype)
    return out
