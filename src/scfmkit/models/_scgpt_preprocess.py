"""scGPT input preparation as numpy kernels: per-cell value binning and tokenisation (no AnnData, no torch).

The algorithm is the reference's (``scgpt.preprocess.binning`` inside ``scgpt.tasks.cell_emb.embed_data``): a cell's
non-zero values are put into ``n_bins - 1`` quantile bins of that cell's own non-zero values, values that sit on
several equal bin edges are spread over those bins at random; ``<cls>`` comes first with ``pad_value``; a cell with
more genes than fit is subsampled. The edges are the reference's own (``np.quantile`` of the values in their dtype,
then ``np.digitize`` from both sides, float rounding included), so with the reference's random stream the bins are
identical, ties included. One change makes it reproducible: the random numbers come from a generator the caller
passes (one per cell, or one ``numpy.random.RandomState`` for all cells to reproduce numpy's global stream), not from
numpy's global state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse

__all__ = ["bin_values", "cell_generators", "tokenize_cells"]


def bin_values(row: np.ndarray, n_bins: int, rng: Any) -> np.ndarray:
    """Bin one cell's values like scGPT's ``binning``.

    Parameters
    ----------
    row
        1-D non-negative values of one cell (zeros allowed), in the dtype the reference would see (the edges are
        ``np.quantile`` of these values).
    n_bins
        ``n_bins`` of the model's ``args.json`` (51): non-zero values get bins ``1 .. n_bins - 1``, zeros stay 0.
    rng
        Anything with ``.random(size)`` returning uniforms in ``[0, 1)`` (:class:`numpy.random.Generator`, or a
        :class:`numpy.random.RandomState` to reproduce the reference's draws). One uniform is drawn per non-zero
        value, as in the reference, and used only where a value sits on several equal bin edges.

    Returns
    -------
    ``int64`` bins, same length as ``row``.
    """
    row = np.asarray(row)
    out = np.zeros(row.shape[0], dtype=np.int64)
    nz = np.flatnonzero(row)
    if nz.size == 0:
        return out
    x = row[nz]
    n = x.size
    # the reference's edges and digitisation, literally (np.quantile's float edges included: an edge that should be
    # exactly a value can round a hair below it, which moves the random range of values tied there by one bin)
    edges = np.quantile(x, np.linspace(0, 1, n_bins - 1))
    left = np.digitize(x, edges)
    right = np.digitize(x, edges, right=True)
    u = np.asarray(rng.random(n), dtype=np.float64)
    out[nz] = np.ceil(u * (right - left) + left).astype(np.int64)
    return out


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(str(name).encode(), digest_size=8).digest(), "little")


def cell_generators(base_seed: int, names: Sequence[str]) -> list[np.random.Generator]:
    """One generator per cell, seeded by ``(base_seed, hash(name))``: independent of batch and cell order."""
    return [np.random.default_rng([int(base_seed), _name_key(n)]) for n in names]


def tokenize_cells(
    X: sparse.csr_matrix,
    gene_ids: np.ndarray,
    *,
    cls_id: int,
    pad_value: float,
    n_bins: int,
    max_length: int,
    rngs: Sequence[np.random.Generator],
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Token ids, input values and used columns of every cell.

    Parameters
    ----------
    X
        Cells x matched genes (CSR, sorted indices); values of any per-cell monotone transform of counts.
    gene_ids
        Vocabulary id of every column of ``X``.
    cls_id, pad_value, n_bins
        From the model's vocabulary and ``args.json``.
    max_length
        Most tokens per cell including ``<cls>``; cells with more non-zero genes keep a random subset
        (drawn after binning, as in the reference).
    rngs
        One generator per cell (:func:`cell_generators`).

    Returns
    -------
    ``(tokens, values, columns, n_genes)``: per cell ``<cls>`` + gene ids (int64), ``pad_value`` + bins
    (float32), the columns of ``X`` used (without ``<cls>``), and each cell's number of non-zero genes before
    subsampling.
    """
    if max_length < 2:
        msg = f"`max_length` must be at least 2 (<cls> plus one gene), got {max_length}."
        raise ValueError(msg)
    tokens: list[np.ndarray] = []
    values: list[np.ndarray] = []
    columns: list[np.ndarray] = []
    n_genes = np.zeros(X.shape[0], dtype=np.int64)
    indptr, indices, data = X.indptr, X.indices, X.data
    for i in range(X.shape[0]):
        lo, hi = indptr[i], indptr[i + 1]
        vals = np.asarray(data[lo:hi], dtype=np.float32)
        keep = vals > 0
        cols = indices[lo:hi][keep].astype(np.int64)
        vals = vals[keep]
        rng = rngs[i]
        bins = bin_values(vals, n_bins, rng).astype(np.float32)
        n_genes[i] = cols.size
        if cols.size + 1 > max_length:
            sel = np.sort(rng.choice(cols.size, size=max_length - 1, replace=False))
            cols, bins = cols[sel], bins[sel]
        tokens.append(np.concatenate([[cls_id], gene_ids[cols]]).astype(np.int64))
        values.append(np.concatenate([np.asarray([pad_value], dtype=np.float32), bins]))
        columns.append(cols)
    return tokens, values, columns, n_genes
