"""``fm.tl.map_to_reference``: place query cells into a reference atlas and transfer its labels.

Two levels: :func:`weighted_knn_transfer` is a pure numpy kernel (exact Euclidean kNN, chunked over query cells so
memory stays bounded, and scArches' distance-weighted vote with its uncertainty); :func:`map_to_reference` is the
AnnData/MuData wrapper that puts query and reference into one space (an existing ``obsm``, a foundation model applied
to both, a reference-fitted PCA, or scArches surgery with scvi-tools) and writes the predictions.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from scfmkit._checks import detect_input, var_names
from scfmkit._dask import is_dask
from scfmkit._knn import UNKNOWN, weighted_knn_transfer
from scfmkit._labels import obs_strings
from scfmkit._random import as_seed
from scfmkit._utils import get_matrix, get_modality, logger, sanitize_params, write_back
from scfmkit.tl._baselines import _lognorm_copy
from scfmkit.tl._distributed_knn import weighted_knn_transfer_blockwise

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["map_to_reference"]


# ----------------------------------------------------------------------------------------------------------------------
# AnnData wrapper
# ----------------------------------------------------------------------------------------------------------------------


def align_genes_to_reference(
    query: AnnData, reference: AnnData, *, gene_key: str | None = None, min_overlap: float = 0.5
) -> pd.Index:
    """Genes of ``reference`` found by name in ``query``; logs the overlap, warns below ``min_overlap``, errors at 0.

    The overlap is the share of reference genes present in the query (as scvi-tools' ``prepare_query_anndata``).
    """
    q_genes = var_names(query, gene_key)
    r_genes = var_names(reference, gene_key)
    common = r_genes[r_genes.isin(q_genes)].unique()
    frac = len(common) / max(len(r_genes.unique()), 1)
    logger.info("Query has %d of %d reference genes (%.1f%%).", len(common), len(r_genes.unique()), 100 * frac)
    if len(common) == 0:
        msg = (
            "Query and reference share no gene names. Use the same identifiers in both (symbols or Ensembl ids), "
            "e.g. pass `gene_key=` naming a var column that holds them."
        )
        raise ValueError(msg)
    if frac < min_overlap:
        msg = (
            f"Only {len(common)} of {len(r_genes.unique())} reference genes ({100 * frac:.1f}%) are in the query; "
            "the mapping may be poor. Check gene identifiers."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
        logger.warning(msg)
    return common


def _subset_genes(adata: AnnData, genes: pd.Index, gene_key: str | None, layer: str | None) -> AnnData:
    """A bare AnnData holding ``genes`` (all present, first occurrence of duplicated names) in that order."""
    import anndata as ad

    names = var_names(adata, gene_key)
    first = ~names.duplicated()
    pos = pd.Index(names[first]).get_indexer(genes)
    if (pos < 0).any():
        msg = f"{int((pos < 0).sum())} requested genes are missing from the data."
        raise KeyError(msg)
    X = get_matrix(adata, layer)
    X = X.tocsr() if sparse.issparse(X) else np.asarray(X)
    out = X[:, np.flatnonzero(first)[pos]]
    return ad.AnnData(X=out, obs=pd.DataFrame(index=adata.obs_names.copy()), var=pd.DataFrame(index=genes.copy()))


def _lognorm_genes(adata: AnnData, layer: str | None, genes: pd.Index, gene_key: str | None, what: str):
    """Log-normalised values of ``genes`` (library sizes over all genes when the input is counts), and the kind."""
    kind = detect_input(get_matrix(adata, layer), what=what)
    full = _lognorm_copy(adata, layer, kind)
    full.var_names = var_names(adata, gene_key)
    return _subset_genes(full, genes, None, None), kind


def map_to_reference(
    adata: AnnData | MuData,
    reference: AnnData | MuData,
    *,
    label_key: str,
    use_rep: str | None = None,
    model: str | Path | Any | None = None,
    method: str = "knn",
    k: int = 15,
    uncertainty_threshold: float | None = 0.5,
    weights: str = "pretrained",
    layer: str | None = None,
    reference_layer: str | None = None,
    gene_key: str | None = None,
    min_overlap: float = 0.5,
    n_hvg: int = 2000,
    n_comps: int = 50,
    batch_key: str | None = None,
    scarches_model: str = "scanvi",
    max_epochs: int | None = None,
    scanvi_max_epochs: int = 20,
    query_max_epochs: int = 100,
    scvi_kwargs: dict[str, Any] | None = None,
    umap_key: str | None = "X_umap",
    chunk_size: int | None = None,
    rng: int | np.random.Generator | None = 0,
    mod: str | None = "rna",
    key_added: str | None = None,
    copy: bool = False,
    **model_options: Any,
) -> AnnData | MuData | None:
    """Map query cells onto a labelled reference and transfer its labels with an uncertainty.

    The query and reference are put into one space, then each query cell gets the distance-weighted kNN vote of its
    ``k`` nearest reference cells (scArches' weighted kNN; uncertainty = 1 - the winning label's weight share); cells
    above ``uncertainty_threshold`` are labelled ``"Unknown"``.

    Spaces (exactly one of):

    - ``use_rep``: an ``obsm`` key present in both, already in one space (e.g. a foundation-model embedding computed
      with :func:`scfmkit.tl.embed` on both, zero-shot). Note that PCAs fitted separately are *not* one space.
    - ``model="pca"``: HVG + PCA fitted on the (log-normalised) reference; the query is projected with the reference
      genes, mean and loadings (PCA-kNN baseline).
    - ``model=<foundation model>`` (registry name, directory or loaded model): both are embedded zero-shot on their
      shared genes with :func:`scfmkit.tl.embed` (``weights``, ``layer``, ``**model_options`` are passed on).
    - ``method="finetune"``: ``model`` (a foundation model) is fine-tuned on the reference labels with
      :func:`scfmkit.tl.finetune` (options from ``**model_options``), or ``model`` is an already fine-tuned
      :class:`~scfmkit.tl.FineTunedClassifier`; predictions come from its classifier (uncertainty 1 - the top class
      probability) and ``obsm['<label_key>_proba']`` holds the class probabilities.
    - ``method="scarches"``: scArches surgery with scvi-tools. SCVI (scArches architecture) is trained on the
      reference counts, then SCANVI (``scarches_model="scanvi"``, predictions from its classifier, uncertainty
      1 - the top class probability) or SCVI alone (``"scvi"``, weighted kNN in the latent space); the query is added
      with ``load_query_data`` as a new batch and trained with frozen reference weights. Needs raw counts in both.

    Parameters
    ----------
    adata
        Query cells x genes (a MuData is read and written in modality ``mod``).
    reference
        Reference cells x genes with labels in ``obs[label_key]`` (not modified).
    label_key
        Reference ``obs`` column with the labels to transfer (cells with missing labels are not used).
    use_rep
        ``obsm`` key present in query and reference. A dask array in the query (e.g. from
        ``fm.tl.embed(..., store=...)``) runs the kNN blockwise on the active dask client (same result).
    model
        ``"pca"`` or a foundation model for :func:`scfmkit.tl.embed`.
    method
        ``"knn"`` (default), ``"scarches"`` or ``"finetune"``.
    k
        Neighbours in the weighted vote (scArches uses 50 on large atlases; 15 suits small references).
    uncertainty_threshold
        Cells with uncertainty above this get ``"Unknown"``; ``None`` keeps every prediction.
    weights
        ``"pretrained"`` or ``"random"`` foundation-model weights (``model=`` only).
    layer, reference_layer
        Layers of query and reference with the values (default ``X``; ``reference_layer`` defaults to ``layer``).
        PCA accepts counts or log-normalised values; scArches needs raw counts.
    gene_key
        ``var`` column with gene names in both (default ``var_names``).
    min_overlap
        Warn when fewer than this share of reference genes are in the query.
    n_hvg, n_comps
        Genes and components of the reference PCA (``model="pca"``); ``n_hvg`` also selects scArches genes
        (``seurat_v3`` on reference counts; all genes when there are fewer).
    batch_key
        ``obs`` column with batches (scArches covariate). Query cells form their own batch(es) (their ``batch_key``
        values, or ``"query"``).
    scarches_model
        ``"scanvi"`` or ``"scvi"`` (``method="scarches"``).
    max_epochs, scanvi_max_epochs, query_max_epochs
        Training epochs of the reference SCVI (scvi-tools' heuristic when ``None``), of SCANVI, and of the query.
    scvi_kwargs
        Replaces the scArches SCVI architecture (``n_layers=2``, ``encode_covariates=True``, layer norm only,
        ``dropout_rate=0.2``).
    umap_key
        Reference ``obsm`` key with a 2-d layout; when present, each query cell is placed at the weighted mean of its
        neighbours' positions (``obsm['X_umap_ref']``). ``None`` skips this.
    chunk_size
        Query cells per kNN block (default 4096).
    rng
        Seed for the PCA solver, scvi-tools and random weights. ``rng=None`` draws fresh (unseeded) randomness;
        the default 0 makes runs reproducible.
    mod
        Modality of MuData inputs.
    key_added
        ``obsm`` key for the query's coordinates in the shared space (defaults below).
    copy
        Return a modified copy of the query instead of writing into it.
    **model_options
        Passed to :func:`scfmkit.tl.embed` (e.g. ``input="lognorm"`` for Geneformer).

    Returns
    -------
    ``None``, or the modified query copy when ``copy=True``. Writes into the query

    - ``obs['<label_key>_pred']``: categorical predicted label (``"Unknown"`` above the threshold);
    - ``obs['<label_key>_uncertainty']``: float in [0, 1];
    - the query's coordinates in the shared space: ``obsm[use_rep]`` stays as it is; ``obsm['X_pca_ref']``
      (``model="pca"``), ``obsm['X_<family>']`` (foundation model), ``obsm['X_scANVI_ref']`` / ``obsm['X_scVI_ref']``
      (scArches), or ``obsm[key_added]``;
    - ``obsm['X_umap_ref']``: position on the reference layout (when ``reference.obsm[umap_key]`` exists);
    - ``uns['map_to_reference']['params']``: space, method, k, threshold, gene overlap, number of Unknown.

    The reference is never modified; for a MuData the coordinates are mirrored into ``mdata.obsm['<mod>:<key>']``.
    """
    if method not in ("knn", "scarches", "finetune"):
        msg = f"`method` must be 'knn', 'scarches' or 'finetune', got {method!r}."
        raise ValueError(msg)
    n_spaces = (use_rep is not None) + (model is not None) + (method == "scarches")
    if method == "finetune" and (model is None or use_rep is not None or model == "pca"):
        msg = "method='finetune' needs `model=`: a foundation model to fine-tune, or a fm.tl.finetune classifier."
        raise ValueError(msg)
    if n_spaces != 1:
        msg = (
            "Give exactly one space: `use_rep=` (an obsm key in both), `model=` ('pca' or a foundation model), "
            "or `method='scarches'`."
        )
        raise ValueError(msg)
    if uncertainty_threshold is not None and not 0 <= uncertainty_threshold <= 1:
        msg = f"`uncertainty_threshold` must be in [0, 1] or None, got {uncertainty_threshold}."
        raise ValueError(msg)
    if scarches_model not in ("scanvi", "scvi"):
        msg = f"`scarches_model` must be 'scanvi' or 'scvi', got {scarches_model!r}."
        raise ValueError(msg)
    data = adata.copy() if copy else adata
    query = get_modality(data, mod)
    ref = get_modality(reference, mod)
    if label_key not in ref.obs:
        msg = f"label_key {label_key!r} is not a reference obs column; available: {list(ref.obs.columns)}."
        raise KeyError(msg)
    labelled = ref.obs[label_key].notna().to_numpy()
    if labelled.sum() == 0:
        msg = f"reference.obs[{label_key!r}] has no labels."
        raise ValueError(msg)
    if not labelled.all():
        logger.info("Ignoring %d reference cells without a %r label.", int((~labelled).sum()), label_key)
    if batch_key is not None and batch_key not in ref.obs:
        msg = f"batch_key {batch_key!r} is not a reference obs column; available: {list(ref.obs.columns)}."
        raise KeyError(msg)
    reference_layer = layer if reference_layer is None else reference_layer
    seed = as_seed(rng)
    params: dict[str, Any] = {
        "method": method,
        "label_key": label_key,
        "k": k,
        "uncertainty_threshold": uncertainty_threshold,
        "n_reference": int(labelled.sum()),
        "seed": seed,
    }
    labels = ref.obs[label_key].to_numpy()[labelled].astype(str)
    proba = None

    if use_rep is not None:
        for name, a in (("query", query), ("reference", ref)):
            if use_rep not in a.obsm:
                msg = f"obsm[{use_rep!r}] is missing in the {name}; compute it in both first (e.g. fm.tl.embed)."
                raise KeyError(msg)
        q_emb = query.obsm[use_rep]  # a dask array stays lazy: the kNN then runs blockwise
        q_emb = q_emb if is_dask(q_emb) else np.asarray(q_emb)
        r_emb = np.asarray(ref.obsm[use_rep])
        if q_emb.shape[1] != r_emb.shape[1]:
            msg = f"obsm[{use_rep!r}] has {q_emb.shape[1]} dims in the query but {r_emb.shape[1]} in the reference."
            raise ValueError(msg)
        out_key = key_added or use_rep
        params["space"] = f"obsm:{use_rep}"
    elif method == "knn" and isinstance(model, str) and model == "pca":
        genes = align_genes_to_reference(query, ref, gene_key=gene_key, min_overlap=min_overlap)
        q_emb, r_emb, info = _pca_space(query, ref, genes, gene_key, layer, reference_layer, n_hvg, n_comps, seed)
        params.update(info)
        out_key = key_added or "X_pca_ref"
        params["space"] = "pca"
    elif method == "knn":
        genes = align_genes_to_reference(query, ref, gene_key=gene_key, min_overlap=min_overlap)
        q_emb, r_emb, family = _fm_space(
            query, ref, genes, model, gene_key, layer, reference_layer, weights, seed, model_options
        )
        params.update({"n_genes": len(genes), "weights": weights})
        out_key = key_added or f"X_{family}"
        params["space"] = f"model:{model if isinstance(model, str | Path) else type(model).__name__}"
    elif method == "finetune":
        from scfmkit.tl._finetune import finetune_proba

        genes = align_genes_to_reference(query, ref, gene_key=gene_key, min_overlap=min_overlap)
        proba, info = finetune_proba(
            query,
            ref[labelled],
            model,
            label_key=label_key,
            layer=layer,
            reference_layer=reference_layer,
            gene_key=gene_key,
            weights=weights,
            seed=seed,
            options=model_options,
        )
        params.update(info)
        q_emb = r_emb = None
        out_key = key_added or f"{label_key}_proba"
        params["space"] = "finetune"
    else:
        genes = align_genes_to_reference(query, ref, gene_key=gene_key, min_overlap=min_overlap)
        q_emb, r_emb, proba, info = _scarches_space(
            query,
            ref,
            genes,
            labelled=labelled,
            label_key=label_key,
            gene_key=gene_key,
            layer=layer,
            reference_layer=reference_layer,
            batch_key=batch_key,
            scarches_model=scarches_model,
            n_hvg=n_hvg,
            max_epochs=max_epochs,
            scanvi_max_epochs=scanvi_max_epochs,
            query_max_epochs=query_max_epochs,
            scvi_kwargs=scvi_kwargs,
            seed=seed,
        )
        params.update(info)
        out_key = key_added or ("X_scANVI_ref" if scarches_model == "scanvi" else "X_scVI_ref")
        params["space"] = f"scarches:{scarches_model}"
    if use_rep is None:
        params["gene_overlap"] = len(genes) / max(len(var_names(ref, gene_key).unique()), 1)

    res = None
    if q_emb is not None:
        knn = weighted_knn_transfer_blockwise if is_dask(q_emb) else weighted_knn_transfer
        res = knn(
            q_emb,
            np.asarray(r_emb)[labelled],
            labels,
            k=min(k, len(labels)),
            uncertainty_threshold=uncertainty_threshold,
            chunk_size=chunk_size,
        )
    if proba is not None:  # SCANVI's or the fine-tuned model's own classifier
        best = proba.columns.to_numpy()[proba.to_numpy().argmax(axis=1)].astype(object)
        uncertainty = np.maximum(1.0 - proba.to_numpy().max(axis=1), 0.0)
    else:
        best, uncertainty = res["best"], res["uncertainty"]
    pred = best.copy()
    if uncertainty_threshold is not None:
        pred[uncertainty > uncertainty_threshold] = UNKNOWN
    umap = None
    if res is not None and umap_key is not None and umap_key in ref.obsm:
        layout = np.asarray(ref.obsm[umap_key])[labelled]
        umap = np.einsum("ij,ijk->ik", res["weights"], layout[res["indices"]]).astype(np.float32)

    # everything computed: write into the query
    known = set(labels) | set(best.astype(str))
    cats = [*sorted(known), *([UNKNOWN] if UNKNOWN not in known else [])]
    query.obs[f"{label_key}_pred"] = pd.Categorical(pred.astype(str), categories=cats)
    query.obs[f"{label_key}_uncertainty"] = uncertainty.astype(np.float64)
    keys = []
    if method == "finetune":
        query.obsm[out_key] = proba.to_numpy().astype(np.float32)
        keys.append(out_key)
    elif out_key != use_rep:
        query.obsm[out_key] = np.asarray(q_emb, dtype=np.float32)
        keys.append(out_key)
    if umap is not None:
        query.obsm["X_umap_ref"] = umap
        keys.append("X_umap_ref")
    params["key"] = out_key
    params["n_unknown"] = int((pred == UNKNOWN).sum())
    query.uns["map_to_reference"] = {"params": sanitize_params(params)}
    write_back(data, mod, obsm_keys=keys)
    logger.info(
        "Mapped %d query cells (%s): %d Unknown; wrote obs[%r], obs[%r]%s",
        query.n_obs,
        params["space"],
        params["n_unknown"],
        f"{label_key}_pred",
        f"{label_key}_uncertainty",
        "".join(f", obsm[{k_!r}]" for k_ in keys),
    )
    return data if copy else None


def _pca_space(query, ref, genes, gene_key, layer, reference_layer, n_hvg, n_comps, seed):
    """Reference-fitted HVG + PCA, query projected with the reference's genes, mean and loadings."""
    import scanpy as sc

    r_work, r_kind = _lognorm_genes(ref, reference_layer, genes, gene_key, "reference values")
    q_work, q_kind = _lognorm_genes(query, layer, genes, gene_key, "query values")
    n_top = min(n_hvg, r_work.n_vars)
    if n_top < r_work.n_vars:
        sc.pp.highly_variable_genes(r_work, n_top_genes=n_top, flavor="seurat")
        hv = r_work.var["highly_variable"].to_numpy()
        r_work, q_work = r_work[:, hv].copy(), q_work[:, hv].copy()
    n = min(n_comps, r_work.n_vars - 1, r_work.n_obs - 1)
    Xr = r_work.X.toarray() if sparse.issparse(r_work.X) else np.asarray(r_work.X)
    Xq = q_work.X.toarray() if sparse.issparse(q_work.X) else np.asarray(q_work.X)
    sc.pp.pca(r_work, n_comps=n, random_state=seed, svd_solver="arpack", zero_center=True)
    loadings = np.asarray(r_work.varm["PCs"], dtype=np.float64)
    mean = np.asarray(Xr, dtype=np.float64).mean(axis=0)
    q_emb = (np.asarray(Xq, dtype=np.float64) - mean) @ loadings
    r_emb = (np.asarray(Xr, dtype=np.float64) - mean) @ loadings
    info = {"n_genes": int(r_work.n_vars), "n_comps": int(n), "reference_input": r_kind, "query_input": q_kind}
    return q_emb, r_emb, info


def _fm_space(query, ref, genes, model, gene_key, layer, reference_layer, weights, seed, model_options):
    """Embed query and reference zero-shot with the same foundation model on their shared genes."""
    import anndata as ad

    from scfmkit import models
    from scfmkit.tl._embed import embed

    if isinstance(model, str | Path):
        model = models.load(model, weights=weights)
    embs = []
    for a, lay in ((query, layer), (ref, reference_layer)):
        sub = _subset_genes(a, genes, gene_key, lay)
        sub = ad.AnnData(X=sub.X, obs=sub.obs, var=sub.var)
        embed(sub, model, weights=weights, mod=None, key_added="X_emb", **model_options)
        embs.append(np.asarray(sub.obsm["X_emb"]))
    return embs[0], embs[1], model.family


_SCARCHES_ARCH = {
    "n_layers": 2,
    "encode_covariates": True,
    "deeply_inject_covariates": False,
    "use_layer_norm": "both",
    "use_batch_norm": "none",
    "dropout_rate": 0.2,
}


def _scarches_space(
    query,
    ref,
    genes,
    *,
    labelled,
    label_key,
    gene_key,
    layer,
    reference_layer,
    batch_key,
    scarches_model,
    n_hvg,
    max_epochs,
    scanvi_max_epochs,
    query_max_epochs,
    scvi_kwargs,
    seed,
):
    """ScArches surgery with scvi-tools; returns query latent, reference latent, SCANVI probabilities, info."""
    import scanpy as sc
    import scvi

    from scfmkit._settings import settings

    for name, a, lay in (("reference", ref, reference_layer), ("query", query, layer)):
        kind = detect_input(get_matrix(a, lay), what=f"{name} values")
        if kind != "counts":
            msg = (
                f"method='scarches' needs raw counts, but the {name} holds non-integer (log-normalised) values. "
                f"Pass `{'reference_layer' if name == 'reference' else 'layer'}=` naming a raw-counts layer, or use "
                "method='knn' with model='pca' / use_rep=."
            )
            raise ValueError(msg)
    bkey, lkey, unlabeled = "_scfmkit_batch", "_scfmkit_label", "_scfmkit_unlabeled"
    r_ad = _subset_genes(ref, var_names(ref, gene_key).unique(), gene_key, reference_layer)
    r_ad.obs[bkey] = obs_strings(ref.obs, batch_key, what="batch_key") if batch_key is not None else "reference"
    r_ad.obs[lkey] = obs_strings(ref.obs, label_key, what="label_key", fill=unlabeled)
    n_top = min(n_hvg, r_ad.n_vars)
    if n_top < r_ad.n_vars:
        sc.pp.highly_variable_genes(r_ad, n_top_genes=n_top, flavor="seurat_v3")
        r_ad = r_ad[:, r_ad.var["highly_variable"].to_numpy()].copy()
    r_ad.X = sparse.csr_matrix(r_ad.X, dtype=np.float32)
    shared = r_ad.var_names[r_ad.var_names.isin(genes)]
    q_ad = _subset_genes(query, shared, gene_key, layer)
    q_ad.X = sparse.csr_matrix(q_ad.X, dtype=np.float32)
    has_batch = batch_key is not None and batch_key in query.obs
    q_batch = obs_strings(query.obs, batch_key, what="query batch_key") if has_batch else None
    q_ad.obs[bkey] = q_batch if q_batch is not None else "query"
    q_ad.obs[lkey] = unlabeled

    scvi.settings.seed = seed
    show = settings.progress
    arch = dict(_SCARCHES_ARCH if scvi_kwargs is None else scvi_kwargs)
    scvi.model.SCVI.setup_anndata(r_ad, batch_key=bkey, labels_key=lkey)
    vae = scvi.model.SCVI(r_ad, **arch)
    vae.train(max_epochs=max_epochs, accelerator="cpu", enable_progress_bar=show)
    if scarches_model == "scanvi":
        ref_model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=unlabeled, labels_key=lkey)
        ref_model.train(
            max_epochs=scanvi_max_epochs, n_samples_per_label=100, accelerator="cpu", enable_progress_bar=show
        )
        cls = scvi.model.SCANVI
    else:
        ref_model, cls = vae, scvi.model.SCVI
    cls.prepare_query_anndata(q_ad, ref_model)  # pads reference genes missing from the query with zeros
    q_model = cls.load_query_data(q_ad, ref_model, accelerator="cpu")
    q_model.train(
        max_epochs=query_max_epochs, plan_kwargs={"weight_decay": 0.0}, accelerator="cpu", enable_progress_bar=show
    )
    q_lat = np.asarray(q_model.get_latent_representation(q_ad), dtype=np.float64)
    r_lat = np.asarray(q_model.get_latent_representation(r_ad), dtype=np.float64)
    proba = None
    if scarches_model == "scanvi":
        proba = q_model.predict(q_ad, soft=True)
        proba = proba.drop(columns=[c for c in proba.columns if c == unlabeled], errors="ignore")
        proba = proba.div(proba.sum(axis=1), axis=0)
    info = {
        "n_genes": int(r_ad.n_vars),
        "epochs_reference": int(vae.history["elbo_train"].shape[0]),
        "epochs_query": int(q_model.history["elbo_train"].shape[0]),
        "batch_key": batch_key,
    }
    return q_lat, r_lat, proba, info
