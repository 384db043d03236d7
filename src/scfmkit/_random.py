"""The one ``rng`` convention of scfmkit (SPEC 7), for every function that draws random numbers.

``rng`` is an ``int`` seed, a :class:`numpy.random.Generator`, or ``None``. ``None`` always means fresh, unseeded
randomness from the operating system (as in numpy and SPEC 7); public functions default to ``rng=0`` so that results
are reproducible unless asked otherwise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RNGLike", "as_generator", "as_seed"]

RNGLike = int | np.random.Generator | None
_MAX_SEED = 2**31 - 1  # seeds also go to scikit-learn and scanpy, which take 32-bit seeds


def _check(rng: object) -> None:
    if rng is None or isinstance(rng, np.random.Generator):
        return
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)):
        msg = f"`rng` must be a non-negative int seed, a numpy.random.Generator or None, got {type(rng).__name__}."
        raise TypeError(msg)
    if rng < 0:
        msg = f"`rng` must be a non-negative int seed, got {rng}."
        raise ValueError(msg)


def as_generator(rng: RNGLike) -> np.random.Generator:
    """A :class:`numpy.random.Generator` for ``rng`` (a given Generator is returned as it is and advances)."""
    _check(rng)
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def as_seed(rng: RNGLike) -> int:
    """An int seed for ``rng``, for code that needs a seed (torch, scanpy, per-cell generators) and records it.

    An int is returned as it is; a Generator draws one (and advances); ``None`` draws from OS entropy.
    """
    _check(rng)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(_MAX_SEED))
    if rng is None:
        return int(np.random.SeedSequence().entropy % _MAX_SEED)
    return int(rng)
