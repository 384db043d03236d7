"""The shared input checks and gene-name lookups of the wrappers (no AnnData writes, no package imports)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["check_nonnegative_finite", "detect_input", "get_matrix", "in_memory", "var_names"]


def check_nonnegative_finite(X: np.ndarray | sparse.spmatrix, *, what: str = "X") -> None:
    """Raise a clear ``ValueError`` if ``X`` holds negative, NaN or infinite values."""
    data = X.data if sparse.issparse(X) else np.asarray(X)
    if data.size == 0:
        return
    if not np.isfinite(data).all():
        msg = f"{what} contains NaN or infinite values; clean or impute them before calling this function."
        raise ValueError(msg)
    if data.min() < 0:
        msg = (
            f"{what} contains negative values (min {data.min():.3g}); this looks scaled or centred. "
            "Pass raw counts (or log-normalised values), e.g. `layer='counts'`."
        )
        raise ValueError(msg)


def get_matrix(adata: AnnData, layer: str | None):
    """Return ``adata.X`` or ``adata.layers[layer]`` with a clear error when the layer is missing."""
    if layer is None:
        if adata.X is None:
            msg = "adata.X is empty; pass `layer=` naming the layer that holds the values."
            raise ValueError(msg)
        return adata.X
    if layer not in adata.layers:
        msg = f"Layer {layer!r} not found; available layers: {list(adata.layers)}. Pass `layer=None` to use `adata.X`."
        raise KeyError(msg)
    return adata.layers[layer]


def in_memory(X):
    """``X`` as an in-memory array or sparse matrix; a backed matrix (``read_h5ad(..., backed='r')``) is read whole.

    For tools that need every value at once (PCA, scVI, binning); the embedding tools stream backed data instead.
    """
    if sparse.issparse(X) or isinstance(X, np.ndarray):
        return X
    if hasattr(X, "to_memory"):  # anndata's backed sparse datasets
        return X.to_memory()
    return np.asarray(X[()] if getattr(X, "ndim", 2) == 0 else X[:])


def detect_input(X: np.ndarray | sparse.spmatrix, *, what: str = "adata.X", n_sample: int = 200_000) -> str:
    """Classify a cells x genes matrix as ``"counts"`` (non-negative integers) or ``"lognorm"`` (non-integer values).

    Raises a clear error for negative (scaled/centred) or non-finite values. Looks at up to ``n_sample`` stored values.
    """
    data = X.data if sparse.issparse(X) else np.asarray(X).ravel()
    if data.size > n_sample:
        idx = np.random.default_rng(0).choice(data.size, n_sample, replace=False)
        data = data[idx]
    data = np.asarray(data, dtype=np.float64)
    if data.size and not np.isfinite(data).all():
        msg = f"{what} contains NaN or infinite values; clean or impute them first."
        raise ValueError(msg)
    if data.size and data.min() < 0:
        msg = (
            f"{what} contains negative values (min {data.min():.3g}), so it looks scaled or centred. "
            "Pass raw counts or log-normalised values instead, e.g. `layer='counts'`."
        )
        raise ValueError(msg)
    if data.size == 0 or np.all(np.abs(data - np.round(data)) < 1e-6):
        return "counts"
    return "lognorm"


def var_names(adata: AnnData, gene_key: str | None = None) -> pd.Index:
    """Gene names of ``adata`` as strings: ``var_names``, or the ``var`` column ``gene_key``.

    Missing values in the column are refused (pandas 3 would keep them missing instead of the text ``"nan"``).
    """
    if gene_key is None:
        return pd.Index(adata.var_names.astype(str))
    if gene_key not in adata.var:
        msg = f"`gene_key={gene_key!r}` is not a column of adata.var (columns: {list(adata.var.columns)})."
        raise KeyError(msg)
    col = adata.var[gene_key]
    if col.isna().any():
        msg = f"var[{gene_key!r}] has {int(col.isna().sum())} missing gene names; fill or drop those genes first."
        raise ValueError(msg)
    return pd.Index(col.astype(str).to_numpy())
