"""Independent forward passes (one per cell) run side by side on the CPU threads, each single-threaded.

Pure torch, no AnnData. A cell's pass is a chain of small ops (a few hundred to a few thousand tokens); split over
the threads, every op ends in a join where the threads wait for each other. One cell per thread instead keeps every
core busy between ops. Together with running each cell through all layers on its own, this made the Geneformer V1
embedding 1.20x as fast on the 2-core benchmark machine, with the same values (``benchmarks/README.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import TypeVar

import torch

__all__ = ["map_sequences"]

T = TypeVar("T")
R = TypeVar("R")


def _context() -> Callable[[], ExitStack]:
    """The caller's thread-local torch state (grad, inference mode, CPU autocast), to enter in a worker thread."""
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu")

    def enter() -> ExitStack:
        stack = ExitStack()
        stack.enter_context(torch.inference_mode(inference))
        stack.enter_context(torch.set_grad_enabled(grad))
        if autocast:
            stack.enter_context(torch.autocast("cpu", dtype=dtype))
        return stack

    return enter


def map_sequences(fn: Callable[[T], R], items: Sequence[T], *, n_threads: int | None = None) -> list[R]:
    """``[fn(item) for item in items]``, run in ``n_threads`` Python threads (default: torch's thread count).

    Each thread runs its items' torch ops single-threaded: torch's thread count is set to 1 while the items run and
    restored afterwards (it is process-wide, so torch ops other threads run meanwhile are single-threaded too).
    Items are started in the given order (put the longest first for an even finish) and the results come back in
    that order. The workers run under the caller's grad, inference-mode and CPU autocast state. With one thread or
    one item this is the plain loop.
    """
    n_threads = torch.get_num_threads() if n_threads is None else n_threads
    if n_threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    enter = _context()

    def work(item: T) -> R:
        with enter():
            return fn(item)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(n_threads, len(items)), thread_name_prefix="scfmkit-seq") as pool:
            return list(pool.map(work, items))
    finally:
        torch.set_num_threads(before)
