"""``fm.tl.joint_embedding``: an RNA (foundation-model) embedding joined with protein or ATAC through muon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._random import as_seed
from .._utils import get_modality, is_mudata, logger, sanitize_params

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["joint_embedding", "modality_embedding"]

_DEFAULT_KEYS = {"protein": "X_pca", "atac": "X_lsi"}
_METHODS = ("wnn", "concat")


def _kind(adata: AnnData, mod: str, kind: str | None) -> str:
    if kind is not None:
        if kind not in _DEFAULT_KEYS:
            msg = f"`kind` must be 'protein' or 'atac', got {kind!r}."
            raise ValueError(msg)
        return kind
    low = mod.lower()
    if low in {"protein", "prot", "adt", "cite"}:
        return "protein"
    if low in {"atac", "peaks", "chromatin"}:
        return "atac"
    msg = f"Cannot tell whether modality {mod!r} holds protein or ATAC counts; pass `kind='protein'` or `kind='atac'`."
    raise ValueError(msg)


def _counts(adata: AnnData, layer: str | None, what: str):
    from scipy import sparse

    from .._utils import check_nonnegative_finite, get_matrix

    X = get_matrix(adata, layer)
    check_nonnegative_finite(X, what=what)
    return X.astype(np.float32) if sparse.issparse(X) else np.asarray(X, dtype=np.float32)


def modality_embedding(
    mdata: MuData | AnnData,
    mod: str = "protein",
    *,
    kind: str | None = None,
    layer: str | None = None,
    n_comps: int | None = None,
    rng: int | np.random.Generator | None = 0,
) -> str:
    """Embed a protein or ATAC modality with muon's standard recipe, leaving its counts untouched.

    - protein (CITE-seq ADTs): :func:`muon.prot.pp.clr` (``flavor="seurat"``, per cell) on a copy, then
      :func:`scanpy.pp.pca` (unscaled) on the CLR values;
    - ATAC peaks: :func:`muon.atac.pp.tfidf` (``scale_factor=1e4``, log TF and IDF) on a copy, then
      :func:`muon.atac.tl.lsi` (components scaled to unit variance).

    Parameters
    ----------
    mdata
        MuData holding modality ``mod`` (or that modality itself as an AnnData).
    mod
        The modality to embed.
    kind
        ``"protein"`` or ``"atac"`` (default: from the modality name: ``protein``/``prot``/``adt`` or
        ``atac``/``peaks``).
    layer
        Layer with the raw counts (default ``X``).
    n_comps
        Components (default: protein ``min(20, n_proteins - 1)``, ATAC ``min(30, n_peaks - 1)``).
    rng
        Seed of the PCA solver and the ARPACK start vector of LSI. ``rng=None`` draws fresh (unseeded)
        randomness; the default 0 makes runs reproducible.

    Returns
    -------
    The ``obsm`` key written. Writes into the modality (never changing ``X``):

    - protein: ``layers['clr']``, ``obsm['X_pca']``, ``varm['PCs']``, ``uns['pca']`` (scanpy's keys);
    - ATAC: ``layers['tfidf']``, ``obsm['X_lsi']``, ``varm['LSI']``, ``uns['lsi']`` (muon's keys; the first LSI
      component mostly tracks sequencing depth and is left out by :func:`joint_embedding`).
    """
    import anndata as ad

    adata = get_modality(mdata, mod) if is_mudata(mdata) else mdata
    if is_mudata(mdata) and mod not in mdata.mod:
        msg = f"Modality {mod!r} is not in this MuData (it has {list(mdata.mod)})."
        raise KeyError(msg)
    kind = _kind(adata, mod, kind)
    X = _counts(adata, layer, f"modality {mod!r} {'X' if layer is None else f'layer {layer!r}'}")
    if adata.n_vars < 3:
        msg = f"Modality {mod!r} has {adata.n_vars} features; an embedding needs at least 3."
        raise ValueError(msg)
    seed = as_seed(rng)
    work = ad.AnnData(X=X.copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # muon's scanpy.__version__ check
        import muon as mu
    if kind == "protein":
        import scanpy as sc
        from scipy import sparse

        if sparse.issparse(work.X):
            work.X = work.X.toarray()
        mu.prot.pp.clr(work)
        n = min(n_comps or 20, work.n_vars - 1, work.n_obs - 1)
        sc.pp.pca(work, n_comps=n, random_state=seed)
        adata.layers["clr"] = np.asarray(work.X, dtype=np.float32)
        adata.obsm["X_pca"] = work.obsm["X_pca"].astype(np.float32)
        adata.varm["PCs"] = work.varm["PCs"]
        adata.uns["pca"] = dict(work.uns["pca"])
        key = "X_pca"
    else:
        from scipy import sparse

        if not sparse.issparse(work.X):
            work.X = sparse.csr_matrix(work.X)
        empty = np.flatnonzero(np.asarray(work.X.sum(axis=1)).ravel() == 0)
        if empty.size:
            msg = (
                f"{empty.size} cells have no counts in modality {mod!r} (e.g. {list(adata.obs_names[empty[:3]])}); "
                "TF-IDF is undefined for them. Drop them first, e.g. "
                f"`mdata = mdata[mdata[{mod!r}].X.sum(axis=1).A1 > 0].copy()` or `muon.pp.filter_obs`."
            )
            raise ValueError(msg)
        mu.atac.pp.tfidf(work, scale_factor=1e4)
        n = min(n_comps or 30, work.n_vars - 1, work.n_obs - 1)
        # muon's LSI calls scipy's svds without a seed, which draws its start vector from numpy's global state:
        # seed it for reproducible signs and restore the caller's state afterwards
        state = np.random.get_state()  # noqa: NPY002
        np.random.seed(seed)  # noqa: NPY002
        try:
            mu.atac.tl.lsi(work, n_comps=n)
        finally:
            np.random.set_state(state)  # noqa: NPY002
        adata.layers["tfidf"] = work.X.astype(np.float32)
        adata.obsm["X_lsi"] = np.asarray(work.obsm["X_lsi"], dtype=np.float32)
        adata.varm["LSI"] = work.varm["LSI"]
        adata.uns["lsi"] = dict(work.uns["lsi"])
        key = "X_lsi"
    logger.info("Modality %r: wrote obsm[%r] (%d comps)", mod, key, adata.obsm[key].shape[1])
    return key


def _standardise(X: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit variance, the block scaled so its total variance is 1."""
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    return (X - X.mean(axis=0)) / sd / np.sqrt(X.shape[1])


def _diffusion_map(connectivities, n_comps: int, seed: int) -> np.ndarray:
    """Diffusion map of a symmetric graph (Coifman & Lafon 2006), one time step, trivial component dropped.

    Eigenvectors ``psi`` of the random-walk transition matrix ``D^-1 W`` (from the symmetric ``D^-1/2 W D^-1/2``),
    each scaled by its eigenvalue, so Euclidean distances approximate diffusion distances on the graph and the smooth
    (large-eigenvalue) directions weigh most. Signs are fixed so that each column's largest entry is positive.
    """
    from scipy import sparse
    from scipy.sparse.linalg import eigsh

    W = sparse.csr_matrix(connectivities, dtype=np.float64)
    W = (W + W.T) / 2
    degree = np.asarray(W.sum(axis=1)).ravel()
    if (degree == 0).any():
        msg = f"{int((degree == 0).sum())} cells have no neighbours in the WNN graph."
        raise ValueError(msg)
    d_inv_sqrt = sparse.diags(1 / np.sqrt(degree))
    S = d_inv_sqrt @ W @ d_inv_sqrt
    k = min(n_comps + 1, W.shape[0] - 2)
    v0 = np.random.default_rng(seed).uniform(size=W.shape[0])
    vals, vecs = eigsh(S, k=k, which="LA", v0=v0)
    order = np.argsort(-vals)
    vals, vecs = vals[order], vecs[:, order]
    psi = d_inv_sqrt @ vecs
    psi = psi[:, 1:] * vals[1:]
    flip = np.sign(psi[np.abs(psi).argmax(axis=0), np.arange(psi.shape[1])])
    flip[flip == 0] = 1
    return (psi * flip).astype(np.float32)


def joint_embedding(
    mdata: MuData,
    *,
    rna_key: str = "X_geneformer",
    other: str = "protein",
    other_key: str | None = None,
    method: str = "wnn",
    rna_mod: str = "rna",
    kind: str | None = None,
    layer: str | None = None,
    n_comps: int = 30,
    n_neighbors: int = 15,
    weights: tuple[float, float] = (1.0, 1.0),
    rng: int | np.random.Generator | None = 0,
    key_added: str | None = None,
    copy: bool = False,
) -> MuData | None:
    """Join an RNA embedding (e.g. a foundation model's) with a protein or ATAC embedding of the same cells.

    The other modality is embedded with muon's own recipe when ``other_key`` is not given (protein: CLR + PCA; ATAC:
    TF-IDF + LSI; see :func:`modality_embedding`). The first LSI component of an ATAC modality's ``obsm['X_lsi']``
    mostly tracks sequencing depth and is left out, as in Signac's and muon's tutorials. Then either

    - ``method="wnn"``: per-modality kNN graphs (:func:`scanpy.pp.neighbors` on ``rna_key`` and the other
      embedding) and muon's weighted nearest neighbours (:func:`muon.pp.neighbors`, Hao et al. 2021), which weighs
      the modalities per cell. A graph is not an embedding, so the graph's diffusion map (Coifman & Lafon 2006:
      ``n_comps`` eigenvectors of its random-walk transition matrix scaled by their eigenvalues, the trivial one
      dropped) is stored as the joint embedding for embedding-based scores such as :func:`scfmkit.metrics.integration`.
    - ``method="concat"``: each embedding standardised (columns to unit variance, the block to total variance 1, so
      a 512-d foundation-model embedding does not drown a 13-d protein PCA), multiplied by ``weights`` and
      concatenated.

    Parameters
    ----------
    mdata
        MuData with modality ``rna_mod`` holding ``obsm[rna_key]`` and modality ``other``. Both must hold every cell
        (run :func:`muon.pp.intersect_obs` first otherwise).
    rna_key
        ``obsm`` key of the RNA embedding in ``mdata[rna_mod]`` (e.g. from :func:`scfmkit.tl.embed` or
        :func:`scfmkit.tl.baselines`); ``mdata.obsm['<rna_mod>:<rna_key>']`` is accepted too.
    other
        Name of the other modality (``"protein"``, ``"atac"``, ...).
    other_key
        Existing ``obsm`` key of the other modality to use as it is (default: computed, see above).
    method
        ``"wnn"`` or ``"concat"``.
    rna_mod
        Name of the RNA modality.
    kind
        ``"protein"`` or ``"atac"`` when the name ``other`` does not tell.
    layer
        Layer of ``other`` with raw counts (default ``X``), used when its embedding is computed.
    n_comps
        Dimensions of the WNN diffusion map and at most this many components for the other modality.
    n_neighbors
        Neighbours of the per-modality and the WNN graphs.
    weights
        ``(rna, other)`` block weights of ``method="concat"``.
    rng
        Seed (PCA/LSI, muon's WNN search, diffusion map). ``rng=None`` draws fresh (unseeded) randomness; the
        default 0 makes runs reproducible.
    key_added
        ``mdata.obsm`` key of the joint embedding and prefix of the graph keys (default ``"X_wnn"`` /
        ``"X_concat"``; the graph prefix drops ``X_``).
    copy
        Return a modified copy instead of writing into ``mdata``.

    Returns
    -------
    ``None`` or a copy when ``copy=True``. Writes, with ``key = key_added`` (default ``X_<method>``) and
    ``name = key`` without ``X_``:

    - ``mdata.obsm[key]``: the joint embedding, float32 cells x dims;
    - ``mdata.uns[name]``: ``params`` (method, keys, modalities, dims, weights, seed);
    - the other modality's embedding when computed (``mdata[other]``: ``layers['clr']``, ``obsm['X_pca']``,
      ``varm['PCs']``, ``uns['pca']`` for protein; ``layers['tfidf']``, ``obsm['X_lsi']``, ``varm['LSI']``,
      ``uns['lsi']`` for ATAC), mirrored as ``mdata.obsm['<other>:<obsm key>']``;
    - ``method="wnn"`` also: per-modality graphs ``mdata[m].uns['<name>_<m>']`` with
      ``mdata[m].obsp['<name>_<m>_distances']`` / ``['<name>_<m>_connectivities']`` (scanpy's keys) for
      ``m`` in ``(rna_mod, other)``; the WNN graph ``mdata.obsp['<name>_distances']``,
      ``mdata.obsp['<name>_connectivities']``, ``mdata.uns['<name>_neighbors']`` (muon's keys); the per-cell
      modality weights ``mdata.obs['<m>:mod_weight']``.

    ``X`` of every modality is never changed and other modalities are untouched.
    """
    if not is_mudata(mdata):
        msg = "`joint_embedding` needs a MuData with an RNA and a protein or ATAC modality (see `mudata.MuData`)."
        raise TypeError(msg)
    if method not in _METHODS:
        msg = f"`method` must be one of {list(_METHODS)}, got {method!r}."
        raise ValueError(msg)
    for m in (rna_mod, other):
        if m not in mdata.mod:
            msg = f"Modality {m!r} is not in this MuData (it has {list(mdata.mod)}); pass `rna_mod=`/`other=`."
            raise KeyError(msg)
    if rna_mod == other:
        msg = "`other` must be a different modality than `rna_mod`."
        raise ValueError(msg)
    for m in (rna_mod, other):
        if mdata.mod[m].n_obs != mdata.n_obs or not mdata.mod[m].obs_names.equals(mdata.obs_names):
            msg = (
                f"Modality {m!r} does not hold every cell of the MuData in the MuData's order; run "
                "`muon.pp.intersect_obs(mdata)` first."
            )
            raise ValueError(msg)
    rna = mdata.mod[rna_mod]
    if rna_key in rna.obsm:
        rna_emb = np.asarray(rna.obsm[rna_key])
    elif f"{rna_mod}:{rna_key}" in mdata.obsm:
        rna_emb = np.asarray(mdata.obsm[f"{rna_mod}:{rna_key}"])
    else:
        msg = (
            f"obsm key {rna_key!r} not found in modality {rna_mod!r} (it has {list(rna.obsm)}); compute it first, "
            f"e.g. `fm.tl.embed(mdata, model, mod={rna_mod!r})` or `fm.tl.baselines(mdata, ['pca'], mod={rna_mod!r})`."
        )
        raise KeyError(msg)
    if rna_emb.ndim != 2 or not np.isfinite(rna_emb).all():
        msg = f"obsm[{rna_key!r}] must be a finite 2-d array."
        raise ValueError(msg)
    other_ad = mdata.mod[other]
    if other_key is not None and other_key not in other_ad.obsm:
        msg = f"obsm key {other_key!r} not in modality {other!r} (it has {list(other_ad.obsm)})."
        raise KeyError(msg)
    if len(weights) != 2 or min(weights) < 0:
        msg = f"`weights` must be two non-negative numbers (rna, other), got {weights!r}."
        raise ValueError(msg)
    try:
        kind_resolved = _kind(other_ad, other, kind)
    except ValueError:
        if other_key is None or kind is not None:
            raise
        kind_resolved = None
    if n_comps < 2 or n_neighbors < 2:
        msg = f"`n_comps` and `n_neighbors` must be >= 2, got {n_comps} and {n_neighbors}."
        raise ValueError(msg)
    if method == "wnn" and mdata.n_obs < max(n_neighbors + 2, n_comps + 3, 10):
        msg = (
            f"WNN needs more cells than neighbours and dimensions: {mdata.n_obs} cells for n_neighbors={n_neighbors}, "
            f"n_comps={n_comps}. Lower them or use method='concat'."
        )
        raise ValueError(msg)

    data = mdata.copy() if copy else mdata
    seed = as_seed(rng)
    other_ad = data.mod[other]
    rna = data.mod[rna_mod]
    computed = other_key is None
    if computed:
        other_key = modality_embedding(data, other, kind=kind_resolved, layer=layer, n_comps=n_comps, rng=seed)
        data.obsm[f"{other}:{other_key}"] = other_ad.obsm[other_key]
    other_emb = np.asarray(other_ad.obsm[other_key], dtype=np.float32)
    other_use = other_key
    if kind_resolved == "atac" and other_key == "X_lsi":  # LSI component 1 tracks depth: left out as Signac/muon do
        other_use = f"{other_key}_no1"
        other_emb = other_emb[:, 1:]

    key = key_added or f"X_{method}"
    name = key[2:] if key.startswith("X_") else key
    params: dict[str, Any] = {
        "method": method,
        "rna_mod": rna_mod,
        "rna_key": rna_key,
        "other": other,
        "other_key": other_key,
        "other_computed": computed,
        "kind": kind_resolved,
        "seed": seed,
        "n_rna_dims": int(rna_emb.shape[1]),
        "n_other_dims": int(other_emb.shape[1]),
    }

    if method == "concat":
        joint = np.hstack([weights[0] * _standardise(rna_emb), weights[1] * _standardise(other_emb)])
        joint = joint.astype(np.float32)
        params["weights"] = [float(w) for w in weights]
    else:
        import warnings

        import scanpy as sc

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import muon as mu

        nkeys = {}
        tmp_keys = []
        for m, ad_m, emb, rep in ((rna_mod, rna, rna_emb, rna_key), (other, other_ad, other_emb, other_use)):
            nk = f"{name}_{m}"
            if rep not in ad_m.obsm:  # the ATAC view without component 1
                ad_m.obsm[rep] = emb
                tmp_keys.append((ad_m, rep))
            sc.pp.neighbors(ad_m, n_neighbors=n_neighbors, use_rep=rep, key_added=nk, random_state=seed)
            nkeys[m] = nk
        try:
            # muon's candidate search asks for n_multineighbors + 1 neighbours of every cell; more than there are
            # cells corrupts memory inside scipy, so both searches are capped by the number of cells
            mu.pp.neighbors(
                data,
                neighbor_keys=nkeys,
                n_neighbors=n_neighbors,
                n_bandwidth_neighbors=min(20, data.n_obs - 2),
                n_multineighbors=min(200, data.n_obs - 2),
                key_added=f"{name}_neighbors",
                random_state=seed,
            )
        finally:
            for ad_m, rep in tmp_keys:
                del ad_m.obsm[rep]
        conn_key = f"{name}_neighbors_connectivities"
        dist_key = f"{name}_neighbors_distances"
        data.obsp[f"{name}_connectivities"] = data.obsp.pop(conn_key)
        data.obsp[f"{name}_distances"] = data.obsp.pop(dist_key)
        data.uns[f"{name}_neighbors"]["connectivities_key"] = f"{name}_connectivities"
        data.uns[f"{name}_neighbors"]["distances_key"] = f"{name}_distances"
        joint = _diffusion_map(data.obsp[f"{name}_connectivities"], n_comps, seed)
        params["n_neighbors"] = n_neighbors
        params["n_comps"] = int(joint.shape[1])
        params["weight_keys"] = [f"{m}:mod_weight" for m in (rna_mod, other)]
    data.obsm[key] = joint
    data.uns[name] = {"params": sanitize_params(params)}
    logger.info("Wrote mdata.obsm[%r] (%d x %d)", key, *joint.shape)
    return data if copy else None
