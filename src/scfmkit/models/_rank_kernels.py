"""Compiled (numba) kernels of the rank-value tokeniser; imported lazily by :mod:`._rank_tokenize`.

Two passes over a CSR chunk, each parallel over cells:

1. :func:`count_kept` counts each cell's entries that will be ranked (gene with a token, value not 0) and sums
   its matched counts;
2. :func:`rank` orders each cell's kept entries by descending value, ties in column order, and writes token ids.

The value is the reference's arithmetic, operation by operation and in the same dtypes (no fast-math, so nothing is
reassociated): ``float64(x * recip * scale) * inv_median`` with ``x``, ``recip`` and ``scale`` in the common dtype of
the counts and the cell totals.

The per-cell sort is a least-significant-digit radix sort. A comparison sort spends most of its time on mispredicted
branches (cells are a few thousand values in no useful order); the radix sort has no data-dependent branches. For
positive floats the bit pattern read as an unsigned integer orders like the value, so the complement of the bits
orders by descending value. The sort runs on the upper 32 bits (4 passes of 8 bits, passes where every key has the
same digit skipped); being stable, it keeps column order among equal keys, and runs of equal upper halves (rare) are
then put in order of the full 64 bits by a stable insertion sort. The result equals a stable sort by descending value.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _value(x, r, scale, inv_median):
    return np.float64(x * r * scale) * inv_median


@numba.njit(parallel=True, cache=True, nogil=True)
def count_kept(data, indices, indptr, column, recip, scale, inv_median, kept, matched):
    for i in numba.prange(len(indptr) - 1):
        n = 0
        total = 0.0
        r = recip[i]
        for p in range(indptr[i], indptr[i + 1]):
            c = column[indices[p]]
            if c >= 0:
                x = data[p]
                total += x
                if _value(x, r, scale, inv_median[c]) != 0.0:
                    n += 1
        kept[i] = n
        matched[i] = total


@numba.njit(inline="always")
def _radix_argsort(full, size, keys, tmp_keys, order, tmp_order, counts):
    """Stable argsort of ``full[:size]`` (uint64) ascending; returns the order array (one of two buffers)."""
    for k in range(size):
        keys[k] = np.uint32(full[k] >> np.uint64(32))
        order[k] = k
    counts[:, :] = 0
    for k in range(size):  # the four digit histograms in one pass
        key = keys[k]
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


@numba.njit(parallel=True, cache=True, nogil=True)
def rank(data, indices, indptr, column, recip, scale, inv_median, kept, token_of_col, offsets, head, max_genes, out):
    for i in numba.prange(len(indptr) - 1):
        size = kept[i]
        if size == 0:
            continue
        vals = np.empty(size, np.float64)
        toks = np.empty(size, out.dtype)
        r = recip[i]
        k = 0
        for p in range(indptr[i], indptr[i + 1]):
            c = column[indices[p]]
            if c >= 0:
                v = _value(data[p], r, scale, inv_median[c])
                if v != 0.0:
                    vals[k] = v
                    toks[k] = token_of_col[c]
                    k += 1
        full = ~vals.view(np.uint64)
        order = _radix_argsort(
            full,
            size,
            np.empty(size, np.uint32),
            np.empty(size, np.uint32),
            np.empty(size, np.int32),
            np.empty(size, np.int32),
            np.empty((4, 256), np.int64),
        )
        start = offsets[i] + head
        for t in range(min(size, max_genes)):
            out[start + t] = toks[order[t]]


@numba.njit(cache=True, nogil=True)
def summarize(data):
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
