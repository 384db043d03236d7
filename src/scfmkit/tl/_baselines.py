"""``fm.tl.baselines``: the non-foundation-model embeddings every comparison shows (random, PCA, scVI, Harmony)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from scfmkit._checks import detect_input, in_memory
from scfmkit._dask import is_dask
from scfmkit._labels import obs_strings
from scfmkit._random import as_seed
from scfmkit._settings import settings
from scfmkit._utils import get_matrix, get_modality, logger, sanitize_params, write_back

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["baselines"]

_METHODS = ("random", "pca", "scvi", "harmony")
_KEYS = {"random": "X_random", "pca": "X_pca", "scvi": "X_scVI", "harmony": "X_harmony"}


def _lognorm_copy(adata: AnnData, layer: str | None, kind: str) -> AnnData:
    """A bare AnnData with log-normalised ``X`` (normalise_total 1e4 + log1p of a copy when ``kind == 'counts'``)."""
    import anndata as ad
    import scanpy as sc

    X = get_matrix(adata, layer)
    X = X if is_dask(X) else in_memory(X)
    work = ad.AnnData(X=X.copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    if kind == "counts":
        work.X = work.X.astype(np.float32)
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    return work


def baselines(
    adata: AnnData | MuData,
    methods: Sequence[str] = ("pca", "scvi"),
    *,
    batch_key: str | None = None,
    layer: str | None = None,
    counts_layer: str | None = None,
    n_hvg: int = 2000,
    n_comps: int = 50,
    n_latent: int = 10,
    max_epochs: int | None = None,
    scvi_kwargs: dict[str, Any] | None = None,
    scvi_save_dir: str | Path | None = None,
    rng: int | np.random.Generator | None = 0,
    mod: str | None = "rna",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Baseline embeddings: the random floor, HVG + PCA, scVI and (optionally) Harmony.

    These, next to foundation-model embeddings computed with ``weights="random"``, are the controls every
    integration or mapping comparison should show.

    Parameters
    ----------
    adata
        Cells x genes. A MuData is read and written in modality ``mod``.
    methods
        Any of ``"random"`` (standard-Gaussian cells x ``n_comps`` matrix, independent of the data: the floor),
        ``"pca"`` (scanpy conventions: ``highly_variable_genes`` with ``flavor="seurat"`` (per batch when
        ``batch_key`` is given), then ``pca`` with ``n_comps`` on the log-normalised HVGs, unscaled),
        ``"scvi"`` (scvi-tools SCVI on the raw counts of ``seurat_v3`` HVGs, ``batch_key`` as batch covariate) and
        ``"harmony"`` (harmonypy on the PCA, needs ``batch_key`` and ``pip install harmonypy``).
    batch_key
        ``obs`` column with the batch (used for HVG selection, scVI and Harmony). Missing values (NaN) raise an
        error: label or drop those cells first.
    layer
        Layer with the values (default ``adata.X``): raw counts or log-normalised values, detected automatically.
        With counts, PCA runs on ``log1p(normalize_total(counts, 1e4))`` of a copy.
    counts_layer
        Layer holding raw counts for scVI when ``layer`` is log-normalised (default: ``layer`` itself).
    n_hvg
        Number of highly variable genes (all genes when there are fewer).
    n_comps
        Components of PCA (and Harmony) and dimensions of the random embedding.
    n_latent
        scVI latent dimensions.
    max_epochs
        scVI training epochs (scvi-tools' default heuristic when ``None``; use 1-2 in tests).
    scvi_kwargs
        Extra keyword arguments for :class:`scvi.model.SCVI` (e.g. ``{"n_layers": 2}``).
    scvi_save_dir
        Save the trained scVI model here (``model.save``); by default the model is discarded.
    rng
        Seed or :class:`numpy.random.Generator` (PCA solver, scVI, Harmony, random embedding). ``rng=None``
        draws fresh (unseeded) randomness; the default 0 makes runs reproducible.
    mod
        Modality of a MuData to use.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Writes, for the requested methods,

    - ``obsm['X_random']``, ``obsm['X_pca']``, ``obsm['X_scVI']``, ``obsm['X_harmony']``: float32 cells x dims;
    - ``uns['pca']``: ``variance``, ``variance_ratio`` (scanpy's keys) when PCA ran;
    - ``uns['baselines']``: ``params`` (methods, input kind, keys, HVG counts, seeds, epochs) and ``hvg``
      (the genes used by PCA) / ``hvg_scvi`` (by scVI).

    Nothing is written when any method fails. For a MuData the embeddings are mirrored as
    ``mdata.obsm['<mod>:<key>']``.

    Notes
    -----
    scVI models raw counts; it refuses log-normalised input with an error (pass ``counts_layer=``). PCA accepts
    either. Random-Gaussian and PCA need no batch information and so are the "no integration" reference points.
    """
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in _METHODS]
    if unknown or not methods:
        msg = f"Unknown baseline method(s) {unknown}; choose from {list(_METHODS)}."
        raise ValueError(msg)
    data = adata.copy() if copy else adata
    target = get_modality(data, mod)
    batches = None if batch_key is None else obs_strings(target.obs, batch_key, what="batch_key")
    if "harmony" in methods:
        if batch_key is None:
            msg = "Harmony needs a batch: pass `batch_key=` (an obs column)."
            raise ValueError(msg)
        try:
            import harmonypy  # noqa: F401
        except ImportError as err:
            msg = "method 'harmony' needs harmonypy: `pip install harmonypy`."
            raise ImportError(msg) from err
    if n_comps < 1 or n_hvg < 2:
        msg = f"`n_comps` must be >= 1 and `n_hvg` >= 2, got {n_comps} and {n_hvg}."
        raise ValueError(msg)

    seed = as_seed(rng)
    X = get_matrix(target, layer)
    # a backed matrix is read once; a lazy (dask) one is checked on its first block, PCA then runs blockwise (_pca)
    X = X.blocks[0].compute() if is_dask(X) else in_memory(X)
    kind = detect_input(X, what="adata.X" if layer is None else f"layer {layer!r}")
    counts_kind = kind
    if "scvi" in methods:
        if counts_layer is not None:
            counts_kind = detect_input(in_memory(get_matrix(target, counts_layer)), what=f"layer {counts_layer!r}")
        if counts_kind != "counts":
            where = "adata.X" if (counts_layer or layer) is None else f"layer {(counts_layer or layer)!r}"
            msg = (
                f"scVI needs raw counts, but {where} holds non-integer (log-normalised) values. "
                "Pass `counts_layer=` naming a layer with raw counts, or drop 'scvi' from `methods`."
            )
            raise ValueError(msg)

    results: dict[str, np.ndarray] = {}
    params: dict[str, Any] = {
        "methods": list(methods),
        "batch_key": batch_key,
        "layer": layer,
        "input": kind,
        "n_hvg": n_hvg,
        "n_comps": n_comps,
        "seed": seed,
    }
    uns_extra: dict[str, Any] = {}
    pca_uns: dict[str, Any] | None = None

    if "random" in methods:
        results["random"] = np.random.default_rng(seed).standard_normal((target.n_obs, n_comps)).astype(np.float32)

    if "pca" in methods or "harmony" in methods:
        pca, pca_uns, hvg = _pca(target, layer, kind, batch_key=batch_key, n_hvg=n_hvg, n_comps=n_comps, seed=seed)
        params["n_comps_pca"] = pca.shape[1]
        uns_extra["hvg"] = hvg
        if "pca" in methods:
            results["pca"] = pca
        if "harmony" in methods:
            results["harmony"] = _harmony(pca, batches, batch_key, seed=seed)

    if "scvi" in methods:
        latent, scvi_params, hvg_scvi = _scvi(
            target,
            counts_layer if counts_layer is not None else layer,
            batch_key=batch_key,
            batches=batches,
            n_hvg=n_hvg,
            n_latent=n_latent,
            max_epochs=max_epochs,
            scvi_kwargs=scvi_kwargs or {},
            save_dir=scvi_save_dir,
            seed=seed,
        )
        results["scvi"] = latent
        params["scvi"] = scvi_params
        uns_extra["hvg_scvi"] = hvg_scvi

    # all computed: write
    keys = []
    for method in methods:
        key = _KEYS[method]
        target.obsm[key] = results[method]
        keys.append(key)
    if pca_uns is not None and "pca" in methods:
        target.uns["pca"] = pca_uns
    params["keys"] = keys
    target.uns["baselines"] = {"params": sanitize_params(params), **uns_extra}
    write_back(data, mod, obsm_keys=keys)
    logger.info("Wrote %s and uns['baselines']", ", ".join(f"obsm[{k!r}]" for k in keys))
    return data if copy else None


def _pca(
    adata: AnnData, layer: str | None, kind: str, *, batch_key: str | None, n_hvg: int, n_comps: int, seed: int
) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    import scanpy as sc

    work = _lognorm_copy(adata, layer, kind)
    if batch_key is not None:
        work.obs[batch_key] = adata.obs[batch_key].to_numpy()
    n_top = min(n_hvg, work.n_vars)
    if n_top < work.n_vars:
        sc.pp.highly_variable_genes(work, n_top_genes=n_top, flavor="seurat", batch_key=batch_key)
        work = work[:, work.var["highly_variable"].to_numpy()].copy()
    n = min(n_comps, work.n_vars - 1, work.n_obs - 1)
    if n < 1:
        msg = f"PCA needs at least 2 cells and 2 genes, got {work.n_obs} x {work.n_vars}."
        raise ValueError(msg)
    if n < n_comps:
        logger.warning("PCA: using %d components (data is %d x %d), not %d.", n, work.n_obs, work.n_vars, n_comps)
    if is_dask(work.X):
        # exact blockwise PCA: scanpy's covariance_eigh sums the Gram matrix and the means over blocks (one pass on
        # the active dask client), then takes the eigenvectors of the covariance; no dask-ml needed
        solver = "covariance_eigh"
    else:
        solver = "arpack" if sparse.issparse(work.X) else None
    sc.pp.pca(work, n_comps=n, random_state=seed, svd_solver=solver)
    pca_uns = {k: np.asarray(v) for k, v in work.uns["pca"].items() if k in ("variance", "variance_ratio")}
    scores = np.asarray(work.obsm["X_pca"], dtype=np.float32)
    if solver == "covariance_eigh":
        # the in-memory solvers' conventions: the largest loading of each component positive (sklearn's svd_flip)
        # and the unbiased variance (covariance_eigh divides by n, arpack/sklearn by n - 1)
        pcs = np.asarray(work.varm["PCs"])
        signs = np.sign(pcs[np.abs(pcs).argmax(axis=0), np.arange(pcs.shape[1])]).astype(np.float32)
        scores = scores * signs
        pca_uns["variance"] = pca_uns["variance"] * work.n_obs / (work.n_obs - 1)
    return scores, pca_uns, work.var_names.to_numpy(dtype=str)


def _harmony(pca: np.ndarray, batches: np.ndarray, batch_key: str, *, seed: int) -> np.ndarray:
    import harmonypy
    import pandas as pd

    meta = pd.DataFrame({batch_key: batches})
    ho = harmonypy.run_harmony(np.asarray(pca, dtype=np.float64), meta, [batch_key], random_state=seed, verbose=False)
    Z = np.asarray(ho.Z_corr)
    if Z.shape[0] != pca.shape[0]:
        Z = Z.T
    return Z.astype(np.float32)


def _scvi(
    adata: AnnData,
    layer: str | None,
    *,
    batch_key: str | None,
    batches: np.ndarray | None,
    n_hvg: int,
    n_latent: int,
    max_epochs: int | None,
    scvi_kwargs: dict[str, Any],
    save_dir: str | Path | None,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    import anndata as ad
    import scanpy as sc
    import scvi

    X = in_memory(get_matrix(adata, layer))
    work = ad.AnnData(X=X.copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    work.layers["counts"] = work.X
    if batch_key is not None:
        work.obs[batch_key] = batches
    n_top = min(n_hvg, work.n_vars)
    if n_top < work.n_vars:
        try:
            sc.pp.highly_variable_genes(
                work, n_top_genes=n_top, flavor="seurat_v3", batch_key=batch_key, layer="counts"
            )
        except ImportError:  # seurat_v3 needs scikit-misc
            logger.warning(
                "scikit-misc missing: selecting scVI genes with flavor='cell_ranger' instead of 'seurat_v3'."
            )
            tmp = _lognorm_copy(adata, layer, "counts")
            sc.pp.highly_variable_genes(tmp, n_top_genes=n_top, flavor="cell_ranger")
            work.var["highly_variable"] = tmp.var["highly_variable"].to_numpy()
        work = work[:, work.var["highly_variable"].to_numpy()].copy()
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(work, layer="counts", batch_key=batch_key)
    model = scvi.model.SCVI(work, n_latent=n_latent, **scvi_kwargs)
    model.train(max_epochs=max_epochs, accelerator="cpu", enable_progress_bar=settings.progress)
    latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
    epochs = int(model.history["elbo_train"].shape[0]) if "elbo_train" in model.history else max_epochs
    if save_dir is not None:
        model.save(str(save_dir), overwrite=True, save_anndata=False)
        logger.info("Saved the scVI model to %s", save_dir)
    params = {"n_latent": n_latent, "epochs": epochs, "n_genes": work.n_vars, **scvi_kwargs}
    return latent, params, work.var_names.to_numpy(dtype=str)
