"""Inference-only helpers shared by the model forwards (pure torch, no AnnData)."""

from __future__ import annotations

import torch

__all__ = ["add_fresh"]


def add_fresh(y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``y + r``, in place on ``y`` (a fresh output nobody else holds); the same values as ``y + r``.

    With mixed dtypes (under autocast a linear output is bf16 and the residual float32) both are first cast to the
    promoted dtype, which is what ``y + r`` computes in, and added in place: no mixed-dtype kernel, one fresh tensor.
    """
    if y.dtype == r.dtype:
        return y.add_(r)
    dtype = torch.promote_types(y.dtype, r.dtype)
    return y.to(dtype).add_(r.to(dtype))
