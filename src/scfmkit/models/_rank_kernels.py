"""Compiled (numba) kernels of the rank-value tokeniser; imported lazily by :mod:`._rank_tokenize`.

One pass over a CSR chunk, over a range of cells ``[first, stop)`` so that threads can share a chunk (the kernel
releases the GIL; :func:`rank_threaded` splits the cells by their stored entries). Python threads rather than numba's
``parallel=True``: numba's OpenMP layer kills a process forked after it ran (multiprocessing's default start method on
Linux), and its fallback layer aborts when two threads call a kernel at once.

:func:`rank` reads each cell's stored entries once: it counts those that are ranked (every stored entry of a gene with
a token, explicitly stored zeros included, as the reference ranks the stored entries of its normalised sparse matrix),
sums their counts, orders them by descending value and writes their token ids right after the previous cell's;
:func:`rank_threaded` moves each finished range of cells down to its place. A cell where two entries of different
tokens have the same value among the kept ones is flagged, so that the caller can order it with numpy's own
(non-stable) ``argsort``, as the reference does. Genes are looked up in per-column tables (token id, -1 for a gene
without one; the median term, NaN for a gene without a token, so that it is never the cell's smallest or largest
value), one lookup per entry and no branch. Whole counts are summed as integers (no floating-point dependency chain
through the loop; the same sum as float64 below 2**53), other values as float64 in entry order.

The value is the reference's arithmetic, operation by operation and in the same dtypes (no fast-math, so nothing is
reassociated). From a sparse matrix (scipy divides by a dense array as a multiplication by its reciprocal):
``float64(x * recip * scale) * inv_median`` with ``x``, ``recip`` and ``scale`` in the common dtype of the counts and
the cell totals. From a dense array (numpy's true division): ``float64((x / n_counts) * scale) / median``.

The per-cell sort is a least-significant-digit radix sort (a comparison sort spends most of its time on mispredicted
branches: cells are a few thousand values in no useful order; the radix sort has no data-dependent branches). For
non-negative floats the bit pattern read as an unsigned integer orders like the value (-0.0 is made 0.0, as numpy
compares it), so the complement of the bits orders by descending value. Each entry becomes one 64-bit word, its key
less the cell's smallest (shifted right where key and entry number would not fit together) above its entry number,
so that one array moves per pass. The words are sorted on their top 20 bits (2 passes of 10 bits; 16 bits for cells
under 1,024 entries: fewer bits leave more runs to sort, more cost more in the histograms); being stable, the sort
keeps entry (column) order among equal digits. Neighbours with equal sorted bits (rare) are noted while the tokens
are written, and each such run is then put in order of the full 64-bit key by a stable insertion sort and its tokens
written again. The result equals a stable sort by descending value.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .._utils import available_cpus


def _thread_limit() -> int:
    """Threads the kernels may use: the CPUs this process may run on, at most numba's thread count.

    That count is ``NUMBA_NUM_THREADS`` until numba's threading layer runs (then ``numba.get_num_threads()``, which
    :func:`numba.set_num_threads` changes). ``numba.get_num_threads()`` itself would start the layer, whose OpenMP
    start-up resets the OpenMP thread count that torch shares: a caller's ``torch.set_num_threads(1)`` became 2.
    """
    from numba.np.ufunc import parallel

    started = getattr(parallel, "_is_initialized", False)  # numba's own flag (private: False if it is renamed)
    numba_threads = numba.get_num_threads() if started else numba.config.NUMBA_NUM_THREADS
    return min(available_cpus(), numba_threads)


@numba.njit(inline="always")
def _value(x, r, scale, m, divide):
    """``r``/``m``: reciprocals of the cell total and of the median (sparse input), else the values (``divide``)."""
    if divide:
        return np.float64((x / r) * scale) / m
    return np.float64(x * r * scale) * m


def rank_threaded(indptr: np.ndarray, *args) -> None:
    """:func:`rank` over all cells on several threads, the cells' tokens one after another from ``out[0]``.

    ``args`` are :func:`rank`'s after ``indptr``. Threads: the CPUs this process may use, at most numba's thread
    count (``NUMBA_NUM_THREADS``, see :func:`_thread_limit`). The cells are cut into ranges of about equal stored
    entries (at least 256 cells, up to 64 ranges per thread) that the threads take in turn (the calling thread too), so
    that a thread slowed down by the machine's other work does not leave the others waiting at the end. Each range
    writes its cells' tokens one after another from its bound; a thread that finishes a range moves the finished
    ranges' tokens down to their place, in order, while the other threads rank on (the tokens are still in cache, and no
    serial pass over all tokens is left for the end).
    """
    bound, out = args[7], args[11]
    n_cells = len(indptr) - 1
    n_threads = max(1, min(_thread_limit(), n_cells // 64))
    if n_threads == 1:
        rank(0, n_cells, indptr, *args)
        return
    n_ranges = min(64 * n_threads, max(n_cells // 256, n_threads))
    bounds = np.searchsorted(indptr, np.linspace(0, indptr[-1], n_ranges + 1)[1:-1]).tolist()
    ranges = list(zip([0, *bounds], [*bounds, n_cells], strict=True))
    ends: list[int | None] = [None] * len(ranges)
    lock = threading.Lock()
    state = {"taken": 0, "moved": 0, "to": 0, "moving": False}

    def move_finished() -> None:
        while True:  # one thread at a time moves the finished ranges that follow the moved ones, in order
            with lock:
                first = state["moved"]
                if state["moving"] or first == len(ranges) or ends[first] is None:
                    return
                last = first
                while last < len(ranges) and ends[last] is not None:
                    last += 1
                state["moving"] = True
            to = state["to"]
            for r in range(first, last):
                start = int(bound[ranges[r][0]])
                n = ends[r] - start
                if to != start:
                    move(out, start, to, n)
                to += n
            with lock:
                state.update(moved=last, to=to, moving=False)

    def work() -> None:
        while True:
            with lock:
                r = state["taken"]
                if r == len(ranges):
                    break
                state["taken"] = r + 1
            ends[r] = rank(ranges[r][0], ranges[r][1], indptr, *args)
            move_finished()

    # a pool per call (no thread outlives it: safe to fork after); the calling thread works too
    with ThreadPoolExecutor(n_threads - 1) as pool:
        futures = [pool.submit(work) for _ in range(n_threads - 1)]
        work()
        for future in futures:
            future.result()
    move_finished()
    if state["moved"] != len(ranges):
        msg = "internal error: not every range of cells was moved into place"
        raise RuntimeError(msg)


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
    tail,
    max_genes,
    out,
    kept,
    matched,
    tied,
    suspect,
):
    """Cells ``first..stop-1``: token ids by descending value, one cell after another from ``out[bound[first]:]``.

    Each cell takes ``head`` + its tokens (at most ``max_genes``) + ``tail`` entries (the special tokens' places are
    left for the caller); returns the end of the range's tokens (at most ``bound[stop]``, the bound when every
    stored entry had a token).

    ``tok_var``/``gene_var``: token id (-1: none) and median term (NaN: no token) of each column. Sets ``kept``
    (entries ranked), ``matched`` (their summed counts), ``tied`` (equal values of different tokens among the first
    ``max_genes``: the caller orders the cell with numpy's argsort) and ``suspect`` (a stored value, with or without
    a token, that is negative, not finite, not an integer or above 2**53: the caller checks the values). Equal values
    are put in column order.
    """
    # scratch buffers for the longest cell of the range, allocated once (not per cell); one spare entry, as the
    # branch-free gather writes every entry and advances only past those with a token
    longest = 1
    for i in range(first, stop):
        longest = max(longest, indptr[i + 1] - indptr[i])
    vals = np.empty(longest + 1, np.float64)
    toks = np.empty(longest + 1, out.dtype)
    a_buf = np.empty(longest, np.uint64)
    b_buf = np.empty(longest, np.uint64)
    runs = np.empty(longest + 1, np.int64)
    hist = np.empty((2, 1024), np.int32)
    one = np.uint64(1)
    pos = bound[first]
    for i in range(first, stop):
        r = recip[i]
        lo, hi = indptr[i], indptr[i + 1]
        k = 0
        whole = 0
        vmin = np.inf
        vmax = -np.inf
        odd = False
        for p in range(lo, hi):
            j = np.uint64(indices[p])  # unsigned: no wrap-around check
            t = tok_var[j]
            x = data[p]
            # not a whole number in [0, 2**53): negative, NaN, infinite, fractional or too large to sum exactly
            odd |= ~((x >= 0) & (x < 9007199254740992.0) & ((x - np.floor(x)) == 0))
            val = _value(x, r, scale, gene_var[j], divide)  # NaN for a column without a token
            vals[k] = val
            toks[k] = t
            vmax = val if val > vmax else vmax  # NaN (no token) is never taken
            vmin = val if val < vmin else vmin
            m = t >= 0
            whole += np.int64(x) & -np.int64(m)  # integers: no floating-point dependency chain
            k += m
        size = k
        kept[i] = size
        suspect[i] = odd
        tied[i] = 0
        if not odd and whole < 9007199254740992:
            matched[i] = np.float64(whole)  # whole numbers summing below 2**53: their float64 sum, exactly
        else:  # the float64 sum in entry order
            total = 0.0
            for p in range(lo, hi):
                total += data[p] if tok_var[np.uint64(indices[p])] >= 0 else 0.0
            matched[i] = total
        start = pos + head
        pos = start + min(size, max_genes) + tail
        if size == 0:
            continue
        if vmin == 0.0:  # a stored zero: -0.0 (a count of -0.0) compares equal to 0.0, as in numpy's sort
            for q in range(size):
                vals[q] += 0.0
            vmin = 0.0
            vmax += 0.0
        fmin = ~np.float64(vmax).view(np.uint64)  # descending value = ascending key (complemented bits)
        fmax = ~np.float64(vmin).view(np.uint64)
        # word = (key - smallest) >> s, then the entry number in the low ib bits
        rbits = _bit_length(fmax - fmin)
        ib = _bit_length(np.uint64(size - 1))
        kb = min(rbits, 64 - ib)
        s = np.uint64(rbits - kb)
        rw = kb + ib
        db = 10 if size >= 1024 else 8
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
            w = (((~np.float64(vals[k]).view(np.uint64) - fmin) >> s) << ibu) | np.uint64(k)
            a_buf[k] = w
            hist[0, (w >> ucut) & dmask] += 1
            hist[1, (w >> ucut2) & dmask] += 1
        src, dst = a_buf, b_buf
        for d in range(n_pass):
            acc = 0
            for b in range(nb):
                c = hist[d, b]
                hist[d, b] = acc
                acc += c
            sh = ucut if d == 0 else ucut2
            for k in range(size):
                w = src[k]
                b = (w >> sh) & dmask
                q = hist[d, b]
                hist[d, b] = q + 1
                dst[q] = w
            src, dst = dst, src
        mask = (one << ibu) - one
        lim = min(size, max_genes)
        # the tokens in sorted order, noting (branch-free) each neighbour pair of equal sorted bits: rare runs
        n_runs = 0
        prev = (src[0] >> ucut) ^ one
        for t in range(lim):
            w = src[t]
            out[start + t] = toks[w & mask]
            h = w >> ucut
            runs[n_runs] = t - 1
            n_runs += h == prev
            prev = h
        if lim < size and (src[lim] >> ucut) == prev:  # a run across the truncation
            runs[n_runs] = lim - 1
            n_runs += 1
        q = 0
        while q < n_runs:  # each run: full-key order (stable), exact ties checked, its tokens written again
            j = runs[q]
            e = j + 2
            q += 1
            while q < n_runs and runs[q] == e - 1:
                e += 1
                q += 1
            hj = src[j] >> ucut
            while e < size and (src[e] >> ucut) == hj:
                e += 1
            for a in range(j + 1, e):
                v = src[a]
                fv = np.float64(vals[v & mask]).view(np.uint64)
                b = a - 1
                while b >= j and np.float64(vals[src[b] & mask]).view(np.uint64) < fv:  # larger value first
                    src[b + 1] = src[b]
                    b -= 1
                src[b + 1] = v
            for a in range(j, min(e - 1, lim)):  # ties past the truncation do not change the tokens kept
                x = src[a] & mask
                y = src[a + 1] & mask
                if vals[x] == vals[y] and toks[x] != toks[y]:
                    tied[i] = 1
            for a in range(j, min(e, lim)):
                out[start + a] = toks[src[a] & mask]
    return pos


def move(out: np.ndarray, src: int, dst: int, n: int) -> None:
    """``out[dst:dst + n] = out[src:src + n]`` for ``dst <= src``, in parts that do not overlap.

    Each part is numpy's copy at memory speed; an overlapping slice assignment would copy through a temporary array.
    """
    gap = src - dst
    done = 0 if gap > 0 else n  # nothing to move when in place
    while done < n:
        c = min(gap, n - done)
        out[dst + done : dst + done + c] = out[src + done : src + done + c]
        done += c


def summarize(data: np.ndarray) -> tuple[int, float, float, int]:
    """:func:`summarize_range` over all of ``data``, split between threads as in :func:`rank_threaded`."""
    n_threads = max(1, min(_thread_limit(), data.size // 65_536))
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
