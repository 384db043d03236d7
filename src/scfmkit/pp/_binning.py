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
    rng: int | np.random.Generator | np.random.RandomState | None = 0,
    mod: str | None = "rna",
    key_added: str = "X_binned",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Bin each cell's values into scGPT's per-cell quantile bins (the reference ``binning``, reproducible).

    Every non-zero value of a cell gets a bin in ``1 .. n_bins - 1`` from the quantiles of that cell's non-zero
    values; zeros stay 0. Values lying on several equal bin edges (ties) are spread over those bins with random
    numbers drawn, per cell, from a generator seeded by ``(rng, obs_name)``, as :func:`scfmkit.tl.embed` does for
    scGPT. (The model bins only the genes in its vocabulary, so these bins are its input values when every gene of
    ``adata`` is in the vocabulary.) The edges are the reference's: ``np.quantile`` of the cell's non-zero values
    in their stored dtype, then ``np.digitize`` from both sides. Bins follow each cell's ranks, so raw counts,
    normalised counts and ``log1p`` give the same bins except where ``np.quantile``'s float rounding puts an edge a
    hair off a tied value (as in the reference).

    For the reference's own draws pass ``rng=np.random.RandomState(seed)``: it is drawn from cell after cell, one
    uniform per non-zero value, exactly as scGPT's ``Preprocessor(binning=n_bins)`` draws from numpy's global
    generator after ``np.random.seed(seed)`` (bins then identical to the reference's, ties included).

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
        0 makes runs reproducible; a :class:`numpy.random.RandomState` reproduces the reference's stream (above).
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
    X = sparse.csr_matrix(X, copy=True)  # the stored dtype: the reference's quantiles are taken in it
    X.sort_indices()
    if isinstance(rng, np.random.RandomState):  # the reference's global stream, cell after cell
        base_seed = "RandomState"
        rngs = [rng] * X.shape[0]
    else:
        base_seed = as_seed(rng)
        rngs = cell_generators(base_seed, list(target.obs_names))
    bins = np.zeros(X.nnz, dtype=np.float32)
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        bins[lo:hi] = bin_values(X.data[lo:hi], n_bins, rngs[i])
    X = sparse.csr_matrix((bins, X.indices, X.indptr), shape=X.shape)
    X.eliminate_zeros()
    # a copy of a backed AnnData is an in-memory one (anndata cannot copy backed objects without a file)
    data = (adata.to_memory() if getattr(adata, "isbacked", False) else adata.copy()) if copy else adata
    out = get_modality(data, mod)
    out.layers[key_added] = X
    out.uns["scgpt_binning"] = {"params": sanitize_params({"n_bins": n_bins, "layer": layer, "rng_seed": base_seed})}
    return data if copy else None
