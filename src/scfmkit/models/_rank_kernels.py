"""Compiled (numba) kernels of the rank-value tokeniser; imported lazily by :mod:`._rank_tokenize`.

Two passes over a CSR chunk, each over a range of cells ``[first, stop)`` so that threads can share a chunk (the
kernels release the GIL; :func:`run_threaded` splits the cells by their stored entries). Python threads rather than
numba's ``parallel=True``: numba's OpenMP layer kills a process forked after it ran (multiprocessing's default start
method on Linux), and its fallback layer aborts when two threads call a kernel at once.

1. :func:`count_kept` counts each cell's entries that will be ranked (every stored entry of a gene with a token,
   explicitly stored zeros included, as the reference ranks the stored entries of its normalised sparse matrix) and
   sums its matched counts;
2. :func:`rank` orders each cell's kept entries by descending value and writes token ids; a cell where two entries of
   different tokens have the same value is flagged, so that the caller can order it with numpy's own (non-stable)
   ``argsort``, as the reference does.

The value is the reference's arithmetic, operation by operation and in the same dtypes (no fast-math, so nothing is
reassociated). From a sparse matrix (scipy divides by a dense array as a multiplication by its reciprocal):
``float64(x * recip * scale) * inv_median`` with ``x``, ``recip`` and ``scale`` in the common dtype of the counts and
the cell totals. From a dense array (numpy's true division): ``float64((x / n_counts) * scale) / median``.

The per-cell sort is a least-significant-digit radix sort. A comparison sort spends most of its time on mispredicted
branches (cells are a few thousand values in no useful order); the radix sort has no data-dependent branches. For
positive floats the bit pattern read as an unsigned integer orders like the value, so the complement of the bits
orders by descending value. The sort runs on the upper 32 bits less their smallest value in the cell (4 passes of 8
bits, passes where every key has the same digit skipped: usually the top one, as a cell's values span a few
octaves); being stable, it keeps column order among equal keys, and runs of equal upper halves (rare) are
then put in order of the full 64 bits by a stable insertion sort. The result equals a stable sort by descending value.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np


@numba.njit(inline="always")
def _value(x, r, scale, m, divide):
    """``r``/``m``: reciprocals of the cell total and of the median (sparse input), else the values (``divide``)."""
    if divide:
        return np.float64((x / r) * scale) / m
    return np.float64(x * r * scale) * m


def run_threaded(kernel, indptr: np.ndarray, *args) -> None:
    """Call ``kernel(first, stop, indptr, *args)`` on cell ranges of about equal stored entries, one per thread.

    Threads: the CPUs this process may use, at most ``numba.get_num_threads()`` (``NUMBA_NUM_THREADS``).
    """
    n_cells = len(indptr) - 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n_threads = max(1, min(cpus, numba.get_num_threads(), n_cells // 64))
    if n_threads == 1:
        kernel(0, n_cells, indptr, *args)
        return
    bounds = np.searchsorted(indptr, np.linspace(0, indptr[-1], n_threads + 1)[1:-1]).tolist()
    ranges = zip([0, *bounds], [*bounds, n_cells], strict=True)
    with ThreadPoolExecutor(n_threads) as pool:  # a pool per call: no thread outlives it (safe to fork after)
        for future in [pool.submit(kernel, first, stop, indptr, *args) for first, stop in ranges]:
            future.result()


@numba.njit(cache=True, nogil=True)
def count_kept(first, stop, indptr, data, indices, column, recip, scale, inv_median, divide, kept, matched):
    """Cells ``first..stop-1``: ``kept`` = stored entries of genes with a token, ``matched`` = their counts."""
    for i in range(first, stop):
        n = 0
        total = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            if column[indices[p]] >= 0:
                total += data[p]
                n += 1
        kept[i] = n
        matched[i] = total


@numba.njit(inline="always")
def _radix_argsort(full, size, keys, tmp_keys, order, tmp_order, counts):
    """Stable argsort of ``full[:size]`` (uint64) ascending; returns the order array (one of two buffers)."""
    low = np.uint32(0xFFFFFFFF)
    for k in range(size):
        key = np.uint32(full[k] >> np.uint64(32))
        keys[k] = key
        low = min(low, key)
        order[k] = k
    counts[:, :] = 0
    for k in range(size):  # the four digit histograms in one pass
        # less the smallest key (same order): a cell's values span a few octaves, so the top digit is then
        # the same for every key and its pass is skipped
        key = keys[k] - low
        keys[k] = key
        counts[0, key & 255] += 1
        counts[1, (key >> 8) & 255] += 1
        counts[2, (key >> 16) & 255] += 1
        counts[3, key >> 24] += 1
    src_k, dst_k, src_o, dst_o = keys, tmp_keys, order, tmp_order
    for d in range(4):
        if counts[d].max() == size:  # every key has the same digit: nothing to do
            continue
        start = 0
        for b in range(256):
            c = counts[d, b]
            counts[d, b] = start
            start += c
        shift = 8 * d
        for k in range(size):
            key = src_k[k]
            b = (key >> shift) & 255
            q = counts[d, b]
            counts[d, b] = q + 1
            dst_k[q] = key
            dst_o[q] = src_o[k]
        src_k, dst_k = dst_k, src_k
        src_o, dst_o = dst_o, src_o
    j = 0
    while j < size:  # equal upper halves: order by the full key, stable
        e = j + 1
        while e < size and src_k[e] == src_k[j]:
            e += 1
        for a in range(j + 1, e):
            v = src_o[a]
            fv = full[v]
            b = a - 1
            while b >= j and full[src_o[b]] > fv:
                src_o[b + 1] = src_o[b]
                b -= 1
            src_o[b + 1] = v
        j = e
    return src_o


@numba.njit(cache=True, nogil=True)
def rank(
    first,
    stop,
    indptr,
    data,
    indices,
    column,
    recip,
    scale,
    inv_median,
    divide,
    kept,
    token_of_col,
    offsets,
    head,
    max_genes,
    out,
    tied,
):
    """Cells ``first..stop-1``: token ids by descending value at ``out[offsets[i] + head:]``.

    Equal values are put in column order; ``tied[i]`` is set where equal values belong to different tokens (their
    order is then numpy's, which the caller applies).
    """
    # scratch buffers for the longest cell of the range, allocated once (not per cell)
    longest = 0
    for i in range(first, stop):
        longest = max(longest, kept[i])
    vals_buf = np.empty(longest, np.float64)
    toks_buf = np.empty(longest, out.dtype)
    keys = np.empty(longest, np.uint32)
    tmp_keys = np.empty(longest, np.uint32)
    order_buf = np.empty(longest, np.int32)
    tmp_order = np.empty(longest, np.int32)
    hist = np.empty((4, 256), np.int64)
    full_buf = np.empty(longest, np.uint64)
    for i in range(first, stop):
        size = kept[i]
        if size == 0:
            continue
        vals = vals_buf[:size]
        toks = toks_buf[:size]
        r = recip[i]
        k = 0
        for p in range(indptr[i], indptr[i + 1]):
            c = column[indices[p]]
            if c >= 0:
                vals[k] = _value(data[p], r, scale, inv_median[c], divide)
                toks[k] = token_of_col[c]
                k += 1
        full = full_buf[:size]
        bits = vals.view(np.uint64)
        for k in range(size):
            full[k] = ~bits[k]
        order = _radix_argsort(full, size, keys, tmp_keys, order_buf, tmp_order, hist)
        tied[i] = 0
        for t in range(size - 1):
            if full[order[t]] == full[order[t + 1]] and toks[order[t]] != toks[order[t + 1]]:
                tied[i] = 1
                break
        start = offsets[i] + head
        for t in range(min(size, max_genes)):
            out[start + t] = toks[order[t]]


def summarize(data: np.ndarray) -> tuple[int, float, float, int]:
    """:func:`summarize_range` over all of ``data``, split between the threads of :func:`run_threaded`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n_threads = max(1, min(cpus, numba.get_num_threads(), data.size // 65_536))
    if n_threads == 1:
        return summarize_range(data)
    edges = np.linspace(0, data.size, n_threads + 1).astype(np.int64)
    with ThreadPoolExecutor(n_threads) as pool:
        parts = list(pool.map(summarize_range, [data[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]))
    return (
        sum(p[0] for p in parts),
        min(p[1] for p in parts),
        max(p[2] for p in parts),
        sum(p[3] for p in parts),
    )


@numba.njit(cache=True, nogil=True)
def summarize_range(data):
    """One pass over the stored values: (number not finite, min, max, number not integer) of the finite ones."""
    n_bad = 0
    n_frac = 0
    lo = np.inf
    hi = -np.inf
    for x in data:
        v = np.float64(x)
        if not np.isfinite(v):
            n_bad += 1
            continue
        lo = min(lo, v)
        hi = max(hi, v)
        if v != np.floor(v):
            n_frac += 1
    return n_bad, lo, hi, n_frac
