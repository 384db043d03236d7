"""Compiled (numba) kernels of the rank-value tokeniser; imported lazily by :mod:`._rank_tokenize`.

One pass over a CSR chunk, over a range of cells ``[first, stop)`` so that threads can share a chunk (the kernel
releases the GIL; :func:`run_threaded` splits the cells by their stored entries). Python threads rather than numba's
``parallel=True``: numba's OpenMP layer kills a process forked after it ran (multiprocessing's default start method on
Linux), and its fallback layer aborts when two threads call a kernel at once.

:func:`rank` reads each cell's stored entries once: it counts those that are ranked (every stored entry of a gene with
a token, explicitly stored zeros included, as the reference ranks the stored entries of its normalised sparse matrix),
sums their counts, orders them by descending value and writes their token ids from a bound of the cell's offset (the
offset if every stored entry had a token); :func:`compact` then moves the cells' tokens together. A cell where two
entries of different tokens have the same value is flagged, so that the caller can order it with numpy's own
(non-stable) ``argsort``, as the reference does. Genes are looked up in per-column tables (token id, -1 for a gene
without one; the median term), one lookup per entry and no branch.

The value is the reference's arithmetic, operation by operation and in the same dtypes (no fast-math, so nothing is
reassociated). From a sparse matrix (scipy divides by a dense array as a multiplication by its reciprocal):
``float64(x * recip * scale) * inv_median`` with ``x``, ``recip`` and ``scale`` in the common dtype of the counts and
the cell totals. From a dense array (numpy's true division): ``float64((x / n_counts) * scale) / median``.

The per-cell sort is a least-significant-digit radix sort (a comparison sort spends most of its time on mispredicted
branches: cells are a few thousand values in no useful order; the radix sort has no data-dependent branches). For
positive floats the bit pattern read as an unsigned integer orders like the value, so the complement of the bits
orders by descending value. Each entry becomes one 64-bit word, its key less the cell's smallest (shifted right where
key and entry number would not fit together) above its entry number, so that one array moves per pass. The words are
sorted on their top 22 bits (2 passes of 11 bits; 16 bits for cells under 1,024 entries); being stable, the sort
keeps entry (column) order among equal digits, and runs of equal sorted bits (rare) are then put in order of the full
64-bit key by a stable insertion sort. The result equals a stable sort by descending value.
"""

from __future__ import annotations

import os
import threading
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
    """Call ``kernel(first, stop, indptr, *args)`` on cell ranges of about equal stored entries, on several threads.

    Threads: the CPUs this process may use, at most ``numba.get_num_threads()`` (``NUMBA_NUM_THREADS``). The cells
    are cut into a few ranges per thread that the threads take in turn (the calling thread too), so that a thread
    slowed down by the machine's other work does not leave the others waiting at the end.
    """
    n_cells = len(indptr) - 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n_threads = max(1, min(cpus, numba.get_num_threads(), n_cells // 64))
    if n_threads == 1:
        kernel(0, n_cells, indptr, *args)
        return
    n_ranges = min(4 * n_threads, max(n_cells // 64, n_threads))
    bounds = np.searchsorted(indptr, np.linspace(0, indptr[-1], n_ranges + 1)[1:-1]).tolist()
    ranges = iter(zip([0, *bounds], [*bounds, n_cells], strict=True))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                r = next(ranges, None)
            if r is None:
                return
            kernel(r[0], r[1], indptr, *args)

    # a pool per call (no thread outlives it: safe to fork after); the calling thread works too
    with ThreadPoolExecutor(n_threads - 1) as pool:
        futures = [pool.submit(work) for _ in range(n_threads - 1)]
        work()
        for future in futures:
            future.result()


@numba.njit(inline="always")
def _bit_length(x):
    """Bits of the uint64 ``x`` (0 for 0)."""
    n = 0
    while x != 0:
        x >>= np.uint64(1)
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def rank(
    first,
    stop,
    indptr,
    data,
    indices,
    tok_var,
    recip,
    scale,
    gene_var,
    divide,
    bound,
    head,
    max_genes,
    out,
    kept,
    matched,
    tied,
    suspect,
):
    """Cells ``first..stop-1``: token ids by descending value at ``out[bound[i] + head:]``.

    ``tok_var``/``gene_var``: token id (-1: none) and median term of each column. Sets ``kept`` (entries ranked),
    ``matched`` (their summed counts), ``tied`` (equal values of different tokens: the caller orders the cell with
    numpy's argsort) and ``suspect`` (a stored value, with or without a token, that is negative, not finite or not an
    integer: not raw counts, so the caller checks the values and raises). Equal values are put in column order.
    """
    # scratch buffers for the longest cell of the range, allocated once (not per cell); one spare entry, as the
    # branch-free gather writes every entry and advances only past those with a token
    longest = 1
    for i in range(first, stop):
        longest = max(longest, indptr[i + 1] - indptr[i])
    vals = np.empty(longest + 1, np.float64)
    full = vals.view(np.uint64)
    toks = np.empty(longest + 1, out.dtype)
    a_buf = np.empty(longest, np.uint64)
    b_buf = np.empty(longest, np.uint64)
    hist = np.empty((2, 2048), np.int32)
    one = np.uint64(1)
    for i in range(first, stop):
        r = recip[i]
        k = 0
        total = 0.0
        fmin = np.uint64(0xFFFFFFFFFFFFFFFF)
        fmax = np.uint64(0)
        odd = False
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            t = tok_var[j]
            x = data[p]
            v = np.float64(x)
            odd |= (v < 0) | (v != np.floor(v)) | ((v - v) != 0)  # negative, fractional, NaN or infinite
            vals[k] = _value(x, r, scale, gene_var[j], divide)
            f = ~full[k]  # descending value = ascending key
            full[k] = f
            toks[k] = t
            m = t >= 0
            total += x if m else 0.0
            sel = np.uint64(0) - np.uint64(m)  # all ones for an entry with a token
            fmin = min(fmin, f | ~sel)
            fmax = max(fmax, f & sel)
            k += m
        size = k
        kept[i] = size
        matched[i] = total
        tied[i] = 0
        suspect[i] = odd
        if size == 0:
            continue
        # word = (key - smallest) >> s, then the entry number in the low ib bits
        rbits = _bit_length(fmax - fmin)
        ib = _bit_length(np.uint64(size - 1))
        kb = min(rbits, 64 - ib)
        s = np.uint64(rbits - kb)
        rw = kb + ib
        db = 11 if size >= 1024 else 8
        cut = max(0, rw - 2 * db)  # the bits sorted on: [cut, rw)
        n_pass = 1 if rw - cut <= db else 2
        dmask = np.uint64((1 << db) - 1)
        ucut = np.uint64(cut)
        ucut2 = np.uint64(cut + db)
        nb = 1 << db
        ibu = np.uint64(ib)
        hist[0, :nb] = 0
        hist[1, :nb] = 0
        for k in range(size):
            w = (((full[k] - fmin) >> s) << ibu) | np.uint64(k)
            a_buf[k] = w
            hist[0, (w >> ucut) & dmask] += 1
            hist[1, (w >> ucut2) & dmask] += 1
        src, dst = a_buf, b_buf
        for d in range(n_pass):
            start = 0
            for b in range(nb):
                c = hist[d, b]
                hist[d, b] = start
                start += c
            sh = ucut if d == 0 else ucut2
            for k in range(size):
                w = src[k]
                b = (w >> sh) & dmask
                q = hist[d, b]
                hist[d, b] = q + 1
                dst[q] = w
            src, dst = dst, src
        mask = (one << ibu) - one
        j = 0
        while j < size - 1:  # runs of equal sorted bits: order by the full key (stable), check for exact ties
            hj = src[j] >> ucut
            if (src[j + 1] >> ucut) != hj:
                j += 1
                continue
            e = j + 2
            while e < size and (src[e] >> ucut) == hj:
                e += 1
            for a in range(j + 1, e):
                v = src[a]
                fv = full[v & mask]
                b = a - 1
                while b >= j and full[src[b] & mask] > fv:
                    src[b + 1] = src[b]
                    b -= 1
                src[b + 1] = v
            for a in range(j, e - 1):
                x = src[a] & mask
                y = src[a + 1] & mask
                if full[x] == full[y] and toks[x] != toks[y]:
                    tied[i] = 1
            j = e
        start = bound[i] + head
        for t in range(min(size, max_genes)):
            out[start + t] = toks[src[t] & mask]


@numba.njit(cache=True, nogil=True)
def compact(bound, offsets, head, tail, out):
    """Move each cell's tokens from ``out[bound[i] + head:]`` to ``out[offsets[i] + head:]`` (``offsets <= bound``)."""
    for i in range(len(offsets) - 1):
        src = bound[i] + head
        dst = offsets[i] + head
        n = offsets[i + 1] - offsets[i] - head - tail
        if src == dst or n == 0:
            continue
        if dst + n <= src:  # apart (the usual case after a few cells): one block copy
            out[dst : dst + n] = out[src : src + n]
        else:
            for t in range(n):  # overlapping, moving down: element by element from the start is safe
                out[dst + t] = out[src + t]


def summarize(data: np.ndarray) -> tuple[int, float, float, int]:
    """:func:`summarize_range` over all of ``data``, split between the threads of :func:`run_threaded`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n_threads = max(1, min(cpus, numba.get_num_threads(), data.size // 65_536))
    if n_threads == 1:
        return summarize_range(data)
    edges = np.linspace(0, data.size, n_threads + 1).astype(np.int64)
    with ThreadPoolExecutor(n_threads - 1) as pool:  # the calling thread summarises the first part
        futures = [pool.submit(summarize_range, data[a:b]) for a, b in zip(edges[1:-1], edges[2:], strict=True)]
        parts = [summarize_range(data[: edges[1]]), *(f.result() for f in futures)]
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
