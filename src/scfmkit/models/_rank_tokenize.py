"""Geneformer's rank-value encoding as pure array kernels (no AnnData, no torch).

A cell becomes the list of its genes ordered by ``count / total_counts * 10,000 / gene_median`` (descending; genes
with zero counts dropped, but explicitly stored zeros of a sparse matrix ranked last, as the reference does), mapped to
token ids and truncated to the model's input size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse

from ._tokens import TokenizedCells

__all__ = ["TokenizedCells", "rank_value_tokenize", "rank_value_tokenize_counts", "token_dtype"]

TARGET_SUM = 10_000


def token_dtype(token_ids: np.ndarray, cls_token: int | None = None, eos_token: int | None = None) -> np.dtype:
    """The smallest integer dtype of the token ids: int16 for Geneformer's vocabularies (< 32,767), else int32."""
    largest = max(int(np.max(token_ids, initial=0)), cls_token or 0, eos_token or 0)
    return np.dtype(np.int16 if largest < np.iinfo(np.int16).max else np.int32)


def rank_value_tokenize(
    counts: sparse.csr_matrix, n_counts: np.ndarray, medians: np.ndarray, token_ids: np.ndarray, **options: Any
) -> TokenizedCells:
    """Rank-value encode cells: :func:`rank_value_tokenize_counts` without the per-cell statistics."""
    return rank_value_tokenize_counts(counts, n_counts, medians, token_ids, **options)[0]


def rank_value_tokenize_counts(
    counts: sparse.csr_matrix,
    n_counts: np.ndarray,
    medians: np.ndarray,
    token_ids: np.ndarray,
    *,
    max_genes: int,
    cls_token: int | None = None,
    eos_token: int | None = None,
    column: np.ndarray | None = None,
    out: np.ndarray | None = None,
    divide: bool = False,
    suspect: np.ndarray | None = None,
) -> tuple[TokenizedCells, np.ndarray, np.ndarray]:
    """Rank-value encode cells; also return each cell's number of ranked genes and its matched counts.

    The value of a gene is ``counts / n_counts * 10,000 / median``, computed bit for bit as the reference does; the
    exact rounding matters, it decides the order of nearly equal genes. The reference evaluates that expression on
    the matrix as it reads it:

    - sparse (``divide=False``): scipy divides by a dense array as a multiplication by its reciprocal, so the value is
      ``x * (1 / n_counts) * 10000`` in the common dtype of the counts and of ``1 / n_counts`` (float32 data with
      float32 totals stays float32; integer data become float64), then ``* (1 / median)`` in float64. Every stored
      entry is ranked: an explicitly stored zero becomes a (last-ranked) token.
    - dense (``divide=True``, pass the dense rows as CSR without zeros): numpy's true division,
      ``(x / n_counts) * 10000`` in the dtype numpy gives ``x / n_counts``, then ``/ median`` in float64.

    Genes are ordered by descending value. The reference sorts with numpy's default (non-stable) ``argsort``: on a
    cell where different genes have exactly the same value (stored zeros, equal counts of genes with equal
    medians), the same ``np.argsort`` is applied to the same float64 values in the same column order, so ties are
    broken as the reference breaks them.

    Parameters
    ----------
    counts
        Cells x genes (CSR), raw counts. Several columns may share a token (via ``column``): they are ranked as
        separate entries (repeated tokens), as the reference does for duplicated gene ids that it does not sum.
    n_counts
        Total counts of each cell over all its genes (also those the model lacks).
    medians
        Non-zero median of each token column's gene in the pretraining corpus (float64).
    token_ids
        Token id of each token column.
    max_genes
        Keep at most this many genes per cell (the model input size minus special tokens).
    cls_token, eos_token
        Prepended/appended special tokens (Geneformer V2).
    column
        Token column of each column of ``counts`` (-1: no token); by default column ``j`` of ``counts`` is token
        column ``j``. Selecting the matched genes this way avoids a copy. Genes are taken in the column order of
        ``counts`` (which decides exact ties, as in the reference).
    out
        Array of dtype :func:`token_dtype` to write the token ids to (from its start); a new one by default. It must
        hold every cell's stored entries (at most ``max_genes``) plus its special tokens: the tokens are written there
        first and then moved together, so the returned ids are its first ``offsets[-1]`` entries.
    divide
        The reference read these cells as a dense array (true division), not as a sparse matrix.
    suspect
        A boolean array of one entry per cell, set where a stored value (of any column) is negative, not finite or
        not an integer, so that a caller can check raw counts in the same pass (the tokens of such cells are
        meaningless).

    Returns
    -------
    ``(tokens, kept, matched)``: the token ids of every cell, genes in descending order of normalised value; per cell
    the number of entries ranked (before truncation) and the summed counts of its matched genes.
    """
    from . import _rank_kernels

    n_counts = np.asarray(n_counts).ravel()
    if np.any(n_counts <= 0):
        bad = int(np.flatnonzero(n_counts <= 0)[0])
        msg = f"Cell {bad} has total counts <= 0; remove empty cells (e.g. `sc.pp.filter_cells(adata, min_counts=1)`)."
        raise ValueError(msg)
    counts = sparse.csr_matrix(counts) if not isinstance(counts, sparse.csr_matrix) else counts
    if not counts.has_sorted_indices:  # genes in column order
        counts = counts.sorted_indices()
    if column is None:
        column = np.arange(counts.shape[1], dtype=np.int64)
    n = counts.shape[0]
    medians = np.asarray(medians, np.float64)
    if divide:  # numpy: x / n_counts * 10000 / median
        dt = np.result_type(counts.dtype, n_counts.dtype)
        dt = dt if dt.kind == "f" else np.dtype(np.float64)  # true division of integers gives float64
        per_cell, per_gene = n_counts.astype(dt), medians
    else:  # scipy: x * (1 / n_counts) * 10000 * (1 / median)
        per_cell = np.true_divide(1.0, n_counts)
        dt = np.result_type(counts.dtype, per_cell.dtype)
        per_cell, per_gene = per_cell.astype(dt, copy=False), np.true_divide(1.0, medians)
    head, tail = int(cls_token is not None), int(eos_token is not None)
    dtype = token_dtype(token_ids, cls_token, eos_token)
    # per column of `counts`: token id (-1: none) and median term, so that the kernel looks each entry up once
    column = np.asarray(column, np.int64)
    has_token = column >= 0
    tok_var = np.where(has_token, np.asarray(token_ids)[np.maximum(column, 0)], -1).astype(dtype)
    gene_var = np.where(has_token, per_gene[np.maximum(column, 0)], np.nan)  # NaN: never a kernel's min or max
    arrays = (counts.data.astype(dt, copy=False), counts.indices, tok_var, per_cell, dt.type(TARGET_SUM), gene_var)
    # each range of cells is written from the bound of its first cell's offset (every stored entry ranked), then moved
    # into place by the threads: one pass over the entries instead of a counting pass first
    bound = np.zeros(n + 1, np.int64)
    np.cumsum(np.minimum(np.diff(counts.indptr), max_genes) + head + tail, out=bound[1:])
    if out is None:
        ids = np.empty(bound[-1], dtype)
    elif out.dtype != dtype or len(out) < bound[-1]:
        msg = f"`out` must be a {dtype} array of at least {bound[-1]} entries, got {out.dtype} of {len(out)}."
        raise ValueError(msg)
    else:
        ids = out[: bound[-1]]
    kept = np.empty(n, np.int64)
    matched = np.empty(n, np.float64)
    tied = np.zeros(n, np.uint8)
    if suspect is None:
        suspect = np.empty(n, np.bool_)
    elif suspect.dtype != np.bool_ or suspect.shape != (n,):
        msg = f"`suspect` must be a boolean array of {n} entries (one per cell), got {suspect.dtype} {suspect.shape}."
        raise ValueError(msg)
    _rank_kernels.rank_threaded(
        counts.indptr,
        *arrays,
        bool(divide),
        bound,
        head,
        tail,
        max_genes,
        ids,
        kept,
        matched,
        tied,
        suspect,
    )
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.minimum(kept, max_genes) + head + tail, out=offsets[1:])
    ids = ids[: offsets[-1]]
    for i in np.flatnonzero(tied):  # exact ties between different tokens: numpy's argsort, as the reference
        ids[offsets[i] + head : offsets[i + 1] - tail] = _argsort_cell(counts, i, arrays, divide, max_genes)
    if cls_token is not None:
        ids[offsets[:-1]] = cls_token
    if eos_token is not None:
        ids[offsets[1:] - 1] = eos_token
    return TokenizedCells(ids, offsets), kept, matched


def _argsort_cell(counts, i, arrays, divide, max_genes):
    """Token ids of cell ``i`` ordered by ``np.argsort(-value)`` (the reference's call) on the same float64 values."""
    data, _, tok_var, per_cell, scale, gene_var = arrays
    lo, hi = counts.indptr[i], counts.indptr[i + 1]
    cols = counts.indices[lo:hi]
    keep = tok_var[cols] >= 0
    x, cols = data[lo:hi][keep], cols[keep]
    if divide:
        value = ((x / per_cell[i]) * scale).astype(np.float64) / gene_var[cols]
    else:
        value = (x * per_cell[i] * scale).astype(np.float64) * gene_var[cols]
    return tok_var[cols][np.argsort(-value)][:max_genes]
