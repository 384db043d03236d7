"""scBERT's input: cells on the model's fixed gene list, normalised, log2-transformed and binned (arrays only).

As the reference ``preprocess.py`` followed by the dataset of ``predict.py``: values are reindexed to the model's
genes in their order (missing genes are zero), each cell is scaled to a total of 10,000 over those genes
(``sc.pp.normalize_total(target_sum=1e4)``, float32 as scanpy), transformed with ``log2(1 + x)``
(``sc.pp.log1p(base=2)``), capped at ``bin_num`` and truncated to an integer: the expression token. A trailing
token 0 is appended to every cell.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

__all__ = ["TARGET_SUM", "bin_expression", "reindex_to_genes"]

TARGET_SUM = 1e4


def reindex_to_genes(X: sparse.csr_matrix, var_cols: np.ndarray, positions: np.ndarray, n_genes: int):
    """Cells x model genes (CSR float32, indices sorted): column ``var_cols[i]`` of ``X`` moved to ``positions[i]``.

    ``X`` must be canonical CSR (no repeated entries). Genes of the model that no ``var_cols`` entry fills are zero.
    """
    sub = X[:, var_cols] if len(var_cols) else sparse.csr_matrix((X.shape[0], 0), dtype=np.float32)
    sub = sparse.csr_matrix(sub, dtype=np.float32)
    out = sparse.csr_matrix((sub.data, positions[sub.indices], sub.indptr), shape=(X.shape[0], n_genes))
    out.sort_indices()
    return out


def bin_expression(X: sparse.csr_matrix, bin_num: int, *, add_trailing: bool = True) -> np.ndarray:
    """Expression tokens ``(n_cells, n_genes [+ 1])`` (uint8) of counts ``X`` on the model's genes.

    ``normalize_total`` as scanpy computes it for float32 CSR (row sums accumulated in float64 and stored in float32,
    divided by 1e4 in float32, values divided by them in float32), ``log1p`` in float32 divided by ``log(2)``, then
    ``min(value, bin_num)`` truncated to an integer. Rows without counts stay 0. With ``add_trailing`` a last column
    of 0 (the reference's appended token) is added.
    """
    X = sparse.csr_matrix(X, dtype=np.float32)
    n, g = X.shape
    lengths = np.diff(X.indptr)
    totals = np.add.reduceat(X.data.astype(np.float64), X.indptr[:-1]) if X.nnz else np.zeros(n)
    totals = np.where(lengths > 0, totals, 0.0).astype(np.float32)
    scale = totals / np.float32(TARGET_SUM)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = X.data / np.repeat(scale, lengths)
    values[np.isnan(values)] = 0.0  # explicit zeros of a cell without counts
    np.log1p(values, out=values)
    np.divide(values, np.log(2), out=values)
    np.minimum(values, bin_num, out=values)
    out = np.zeros((n, g + int(add_trailing)), np.uint8)
    rows = np.repeat(np.arange(n), lengths)
    out[rows, X.indices] = values.astype(np.uint8)  # truncation towards zero, as torch's .long()
    return out
