"""MuData built from the real multi-modal datasets (CITE-seq RNA + protein)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from ._loaders import pbmc_cite

if TYPE_CHECKING:
    from mudata import MuData

__all__ = ["pbmc_cite_mudata"]


def _protein_frame(adata) -> pd.DataFrame:
    """ADT counts of one run as a cells x proteins DataFrame (names from ``uns['protein_names']``)."""
    values = adata.obsm["protein_expression"]
    if isinstance(values, pd.DataFrame):
        return values.set_axis(adata.obs_names, axis=0)
    names = [str(n) for n in np.asarray(adata.uns["protein_names"]).ravel()]
    return pd.DataFrame(np.asarray(values), index=adata.obs_names, columns=names)


def pbmc_cite_mudata(
    *,
    runs: Sequence[str] = ("10k", "5k"),
    join: str = "inner",
    batch_key: str = "batch",
    path: str | Path | None = None,
) -> MuData:
    """The 10x CITE-seq PBMC runs as one MuData with an ``rna`` and a ``protein`` modality.

    Reads :func:`pbmc_cite` for each run (200 cells each, raw counts) and stacks them, the runs as batches.

    Parameters
    ----------
    runs
        Which runs to stack, any of ``"10k"`` and ``"5k"``.
    join
        ``"inner"``: genes and proteins measured in every run (the 10k run has 14 ADTs, all in the 5k panel);
        ``"outer"``: all of them, missing ones as 0 counts.
    batch_key
        ``obs`` column (in the MuData and both modalities) naming the run, e.g. ``"pbmc10k"``.
    path
        A folder holding the ``.h5ad`` files (default ``$SCFMKIT_DATA_DIR``, then the download cache).

    Returns
    -------
    :class:`mudata.MuData` with

    - ``mod['rna']``: cells x genes, raw counts (sparse CSR, float32) in ``X`` and ``layers['counts']``, gene
      symbols as ``var_names``;
    - ``mod['protein']``: cells x ADTs, raw counts in ``X`` and ``layers['counts']``, the ADT names as ``var_names``
      (e.g. ``CD14_TotalSeqB``, so they never clash with gene symbols in ``mdata.var_names``), the protein alone in
      ``var['protein']`` (``CD14``);
    - ``obs[batch_key]`` in the MuData and in both modalities; ``obs_names`` are ``<barcode>-<run>``.
    """
    import anndata as ad
    import mudata as md

    if join not in {"inner", "outer"}:
        msg = f"`join` must be 'inner' or 'outer', got {join!r}."
        raise ValueError(msg)
    if isinstance(runs, str):
        runs = (runs,)
    if not runs:
        msg = "Pass at least one run in `runs`, e.g. ('10k', '5k')."
        raise ValueError(msg)
    rnas, prots = [], []
    for run in runs:
        adata = pbmc_cite(run, path=path)
        label = f"pbmc{run}"
        names = [f"{n}-{label}" for n in adata.obs_names]
        prot = _protein_frame(adata)
        X = adata.X if sparse.issparse(adata.X) else sparse.csr_matrix(adata.X)
        rna = ad.AnnData(X=sparse.csr_matrix(X, dtype=np.float32), var=pd.DataFrame(index=adata.var_names.astype(str)))
        rna.obs_names = names
        rna.obs[batch_key] = label
        rna.var_names_make_unique()
        rnas.append(rna)
        p = ad.AnnData(X=prot.to_numpy(dtype=np.float32), var=pd.DataFrame(index=prot.columns.astype(str)))
        p.obs_names = names
        p.obs[batch_key] = label
        prots.append(p)
    rna = ad.concat(rnas, join=join, fill_value=0) if len(rnas) > 1 else rnas[0]
    prot = ad.concat(prots, join=join, fill_value=0) if len(prots) > 1 else prots[0]
    for a in (rna, prot):
        a.obs[batch_key] = pd.Categorical(a.obs[batch_key], categories=[f"pbmc{r}" for r in runs])
        a.layers["counts"] = a.X.copy()
    prot.var["protein"] = [n.removesuffix("_TotalSeqB") for n in prot.var_names]
    mdata = md.MuData({"rna": rna, "protein": prot})
    mdata.obs[batch_key] = rna.obs[batch_key].reindex(mdata.obs_names)
    return mdata
