"""Geneformer's rank-value encoding as pure array kernels (no AnnData, no torch).

A cell becomes the list of its genes ordered by ``count / total_counts * 10,000 / gene_median`` (descending, genes
with zero counts dropped), mapped to token ids and truncated to the model's input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

__all__ = ["TokenizedCells", "rank_value_tokenize"]

TARGET_SUM = 10_000


@dataclass
class TokenizedCells:
    """Ragged token ids of many cells: ``input_ids[offsets[i]:offsets[i + 1]]`` is cell ``i``."""

    input_ids: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Number of tokens per cell."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def concatenate(cls, parts: list[TokenizedCells]) -> TokenizedCells:
        """Join tokenised chunks in order."""
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64))
        ids = np.concatenate([p.input_ids for p in parts])
        lengths = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(ids, offsets)


def normalise_for_ranking(counts: sparse.csr_matrix, n_counts: np.ndarray, medians: np.ndarray) -> sparse.csr_matrix:
    """``counts / n_counts * 10,000 / medians`` on the stored entries, bit for bit as the reference computes it.

    The reference evaluates ``X / n_counts * 10000 / medians`` on a scipy sparse matrix, which divides by a dense
    array as a multiplication by its reciprocal. So the value is ``x * (1 / n_counts)`` and ``* 10000`` in the
    common dtype of the counts and ``n_counts`` (float32 data with float32 totals stays float32), then
    ``* (1 / median)`` in float64. The exact rounding matters: it decides the order of nearly equal genes.
    Entries that are zero are dropped.
    """
    recip = np.true_divide(1.0, n_counts)
    dt = np.result_type(counts.dtype, recip.dtype)
    vals = counts.data.astype(dt, copy=False) * np.repeat(recip.astype(dt, copy=False), np.diff(counts.indptr))
    vals *= dt.type(TARGET_SUM)
    vals = vals.astype(np.float64, copy=False) * np.true_divide(1.0, medians)[counts.indices]
    out = sparse.csr_matrix((vals, counts.indices, counts.indptr), shape=counts.shape)
    out.eliminate_zeros()
    return out


def rank_value_tokenize(
    counts: sparse.csr_matrix,
    n_counts: np.ndarray,
    medians: np.ndarray,
    token_ids: np.ndarray,
    *,
    max_genes: int,
    cls_token: int | None = None,
    eos_token: int | None = None,
) -> TokenizedCells:
    """Rank-value encode cells.

    Parameters
    ----------
    counts
        Cells x matched genes (CSR), raw counts; one column per token (duplicates already summed).
    n_counts
        Total counts of each cell over all its genes (also those the model lacks).
    medians
        Non-zero median of each column's gene in the pretraining corpus (float64).
    token_ids
        Token id of each column.
    max_genes
        Keep at most this many genes per cell (the model input size minus special tokens).
    cls_token, eos_token
        Prepended/appended special tokens (Geneformer V2).

    Returns
    -------
    The token ids of every cell, genes in descending order of normalised value; ties keep column order (stable).
    """
    if np.any(n_counts <= 0):
        bad = int(np.flatnonzero(n_counts <= 0)[0])
        msg = f"Cell {bad} has total counts <= 0; remove empty cells (e.g. `sc.pp.filter_cells(adata, min_counts=1)`)."
        raise ValueError(msg)
    counts = counts.tocsr()
    if not counts.has_sorted_indices:  # ties are broken by column order
        counts = counts.sorted_indices()
    norm = normalise_for_ranking(counts, np.asarray(n_counts).ravel(), medians)
    n = norm.shape[0]
    lengths = np.minimum(np.diff(norm.indptr), max_genes)
    head = int(cls_token is not None)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths + head + int(eos_token is not None), out=offsets[1:])
    largest = max(int(token_ids.max(initial=0)), cls_token or 0, eos_token or 0)
    ids = np.empty(offsets[-1], np.int16 if largest < np.iinfo(np.int16).max else np.int32)
    data, indices, indptr = norm.data, norm.indices, norm.indptr
    cell_tokens = token_ids.astype(ids.dtype)
    for i in range(n):
        lo, hi = indptr[i], indptr[i + 1]
        # descending order of one cell, ties in column order (a stable sort); numpy's default sort is about twice
        # as fast on real cells, so use it and fall back to the stable sort only when the cell has tied values
        neg = -data[lo:hi]
        top = np.argsort(neg)
        ranked = neg[top]
        if (ranked[1:] == ranked[:-1]).any():
            top = np.argsort(neg, kind="stable")
        top = top[:max_genes]
        start = offsets[i] + head
        ids[start : start + len(top)] = cell_tokens[indices[lo:hi][top]]
    if cls_token is not None:
        ids[offsets[:-1]] = cls_token
    if eos_token is not None:
        ids[offsets[1:] - 1] = eos_token
    return TokenizedCells(ids, offsets)
