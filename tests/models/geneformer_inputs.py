"""Storage variants of real count matrices, as users feed them to the Geneformer tokeniser.

Shared by tests/models/test_geneformer_storage_parity.py and the (out-of-repo) script that ran the reference
tokenizer on the same inputs (see tests/data/golden/README_geneformer_storage.md). Plain numpy/scipy/anndata.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

# dataset -> (file under $SCFMKIT_DATA_DIR, number of leading cells the reference was run on)
DATASETS = {
    "celltypist": ("celltypist_sample_counts_559cells.h5ad", 559),
    "kang": ("kang2018_ifnb_counts.h5ad", 300),
    "pbmc10k": ("pbmc10k_cite_200cells.h5ad", 200),
    "pbmc5k": ("pbmc5k_cite_200cells.h5ad", 200),
    "papalexi": ("papalexi2021_eccite_lowmoi.h5ad", 300),
}

# "<format>_<dtype>[_<suffix>]"; suffixes: ncounts_<dtype> (obs['n_counts'] given in that dtype), zeros (explicitly
# stored zeros), dup (a few genes repeated as extra columns under the same symbol, var['symbol'])
STORAGES = (
    "as_stored",
    "csr_float32",
    "csr_float64",
    "csr_int32",
    "csr_int64",
    "csc_float32",
    "csc_int64",
    "dense_float32",
    "dense_float64",
    "dense_int32",
    "csr_float32_ncounts_int64",
    "csr_float32_ncounts_float64",
    "dense_float32_ncounts_int64",
    "csr_float32_zeros",
    "csc_int32_zeros",
    "csr_float32_dup",
)


def add_stored_zeros(X, rows: np.ndarray):
    """A copy of CSR/CSC ``X`` with explicit (stored) zeros in place of the entries of value 1 whose column plus cell
    index (``rows``: each row's index in the file) is a multiple of 4; independent of which cells are taken."""
    X = X.copy()
    coo = X.tocoo()
    hit = (coo.data == 1) & ((coo.col + rows[coo.row]) % 4 == 0)
    # the entries of CSR and CSC matrices are stored in the order tocoo() returns them
    X.data[hit] = 0
    return X


def dup_columns(X) -> np.ndarray:
    """Columns that the ``_dup`` variant repeats (appended at the end under the same symbol): the 6 detected in most
    cells of the whole file, in column order."""
    detected = np.asarray((X != 0).sum(axis=0)).ravel()
    return np.sort(np.argsort(-detected, kind="stable")[:6])


def storage_variant(adata, kind: str, cells: np.ndarray | None = None):
    """Cells ``cells`` (default all) of ``adata`` (raw counts, symbols as var_names) in storage ``kind``.

    A new AnnData. ``obs['n_counts']`` is kept from the file for ``as_stored`` (when it has one), set for
    ``*_ncounts_*`` and absent otherwise. ``var['symbol']`` holds the gene symbols (with the repeats of ``_dup``).
    Each cell's matrix row does not depend on which other cells are taken.
    """
    import anndata as ad

    rows = np.arange(adata.n_obs) if cells is None else np.asarray(cells)
    X0 = adata.X[rows]
    symbols = np.asarray(adata.var_names, dtype=object)
    nc = None
    if kind == "as_stored":
        X = X0.copy()
        if "n_counts" in adata.obs:
            nc = adata.obs["n_counts"].to_numpy()[rows]
    else:
        parts = kind.split("_")
        fmt, dt = parts[0], np.dtype(parts[1])
        dense = X0.toarray() if sparse.issparse(X0) else np.asarray(X0)
        dense = dense.astype(dt)
        X = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[fmt](dense)
        if "zeros" in parts:
            X = add_stored_zeros(X, rows)
        if "ncounts" in parts:
            nc = np.asarray(X.sum(axis=1)).ravel().astype(parts[-1])
        if "dup" in parts:
            extra = dup_columns(adata.X)
            X = sparse.hstack([X, X[:, extra]], format="csr", dtype=X.dtype)
            symbols = np.concatenate([symbols, symbols[extra]])
    out = ad.AnnData(X=X)
    out.obs_names = adata.obs_names[rows].copy()
    out.var_names = [f"{s}-{j}" for j, s in enumerate(symbols)] if "dup" in kind else symbols.astype(str)
    out.var["symbol"] = symbols.astype(str)
    if nc is not None:
        out.obs["n_counts"] = nc
    return out
