"""``fm.pp.bin_scgpt``: scGPT's per-cell quantile bins as a layer (the reference ``binning``, reproducible)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from .._checks import check_nonnegative_finite, get_matrix, in_memory
from .._random import as_seed
from .._utils import get_modality, sanitize_params

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["bin_scgpt"]


def bin_scgpt(
    adata: AnnData | MuData,
    *,
    n_bins: int = 51,
    layer: str | None = None,
    rng: int | np.random.Generator | None = 0,
    mod: str | None = "rna",
    key_added: str = "X_binned",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Bin each cell's values into scGPT's per-cell quantile bins (the reference ``binning``, reproducible).

    Every non-zero value of a cell gets a bin in ``1 .. n_bins - 1`` from the quantiles of that cell's non-zero
    values; zeros stay 0. Values lying on several equal bin edges (ties) are spread over those bins with random
    numbers drawn, per cell, from a generator seeded by ``(rng, obs_name)``, as :func:`scfmkit.tl.embed` does for
    scGPT. (The model bins only the genes in its vocabulary, so these bins are its input values when every gene of
    ``adata`` is in the vocabulary.) Bins depend only on each cell's ranks: raw counts, normalised counts and
    ``log1p`` give the same bins.

    Parameters
    ----------
    adata
        Cells x genes, non-negative and finite (a MuData is used through modality ``mod``).
    n_bins
        ``n_bins`` of the model's ``args.json`` (51 for the released checkpoints).
    layer
        Layer with the values (default ``adata.X``).
    rng
        Seed or generator of the tie-breaking draws. ``rng=None`` draws fresh (unseeded) randomness; the default
        0 makes runs reproducible.
    mod
        Modality of a MuData.
    key_added
        Layer to write.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Writes ``layers[key_added]`` (CSR float32 bins) and
    ``uns['scgpt_binning']['params']`` (``n_bins``, ``layer``, ``rng_seed``).
    """
    from ..models._scgpt_preprocess import bin_values, cell_generators

    if n_bins < 3:
        msg = f"`n_bins` must be at least 3, got {n_bins}."
        raise ValueError(msg)
    target = get_modality(adata, mod)
    X = in_memory(get_matrix(target, layer))  # a backed matrix is read once
    what = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_nonnegative_finite(X, what=what)
    X = sparse.csr_matrix(X, dtype=np.float32, copy=True)
    X.sort_indices()
    base_seed = as_seed(rng)
    rngs = cell_generators(base_seed, list(target.obs_names))
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        X.data[lo:hi] = bin_values(X.data[lo:hi], n_bins, rngs[i])
    X.eliminate_zeros()
    # a copy of a backed AnnData is an in-memory one (anndata cannot copy backed objects without a file)
    data = (adata.to_memory() if getattr(adata, "isbacked", False) else adata.copy()) if copy else adata
    out = get_modality(data, mod)
    out.layers[key_added] = X
    out.uns["scgpt_binning"] = {"params": sanitize_params({"n_bins": n_bins, "layer": layer, "rng_seed": base_seed})}
    return data if copy else None
