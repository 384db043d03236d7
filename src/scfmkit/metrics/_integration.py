"""Integration scores (scib-metrics' Benchmarker on a private container) and label-transfer accuracy."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scfmkit._checks import detect_input
from scfmkit._random import as_seed
from scfmkit._utils import get_matrix, get_modality, is_mudata, logger
from scfmkit.metrics._scib_speed import fast_scib

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["integration", "label_transfer"]

RANDOM = "Random (floor)"
PCA = "PCA (unintegrated)"
_PRE = "_scfmkit_X_pre"
_AGG = "Aggregate score"
_SKIP_DEFAULT = ("X_umap", "X_tsne", "X_draw_graph_fa", "X_draw_graph_fr", "X_diffmap", "X_umap_ref")


def _container(adata: AnnData, embeddings: list[str], batch_key: str, label_key: str) -> AnnData:
    """A new AnnData sharing the embedding arrays with ``adata`` but owning its own obs/obsm/uns dicts."""
    import anndata as ad

    obs = pd.DataFrame(
        {
            batch_key: adata.obs[batch_key].astype(str).to_numpy(),
            label_key: adata.obs[label_key].astype(str).to_numpy(),
        },
        index=adata.obs_names.copy(),
    )
    out = ad.AnnData(obs=obs)
    for key in embeddings:
        out.obsm[key] = np.asarray(adata.obsm[key])
    return out


def _pre_integrated_pca(adata: AnnData, layer: str | None, *, n_comps: int, seed: int, solver: str) -> np.ndarray:
    """Benchmarker's unintegrated embedding: ``sc.tl.pca`` of all genes (normalised + log1p first when counts)."""
    import anndata as ad
    import scanpy as sc

    X = get_matrix(adata, layer)
    kind = detect_input(X, what="adata.X" if layer is None else f"layer {layer!r}")
    work = ad.AnnData(X=X.astype(np.float32) if kind == "counts" else X)
    if kind == "counts":
        logger.info("Unintegrated PCA: the values look like counts; using log1p(normalize_total) of a copy.")
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    n = min(n_comps, work.n_vars - 1, work.n_obs - 1)
    sc.tl.pca(work, n_comps=n, svd_solver=solver, mask_var=None, random_state=seed)
    return np.asarray(work.obsm["X_pca"])


def _run_benchmarker(
    cont: AnnData, keys: list[str], batch_key: str, label_key: str, bio, batch, n_jobs: int, solver: str, neighbors
) -> pd.DataFrame:
    from scib_metrics.benchmark import Benchmarker

    from scfmkit._settings import settings

    bm = Benchmarker(
        cont,
        batch_key=batch_key,
        label_key=label_key,
        embedding_obsm_keys=keys,
        bio_conservation_metrics=bio,
        batch_correction_metrics=batch,
        pre_integrated_embedding_obsm_key=_PRE,
        n_jobs=n_jobs,
        progress_bar=settings.progress,
        solver=solver,
    )
    # Benchmarker calls gc.collect() before every metric of every embedding; with torch/jax/scanpy loaded one full
    # collection scans millions of long-lived objects (~0.4 s each): fast_scib skips those, and freezing the heap
    # that existed before the run keeps Python's own collections cheap; the objects are unfrozen afterwards.
    # fast_scib also swaps in compile-once versions of scib-metrics' k-means and kBET kernels and memoises the
    # unintegrated embedding's PCR (same arithmetic, same numbers; see _scib_speed).
    gc.collect()
    gc.freeze()
    try:
        with fast_scib():
            bm.prepare(neighbor_computer=_neighbor_computer(neighbors))
            bm.benchmark()
    finally:
        gc.unfreeze()
    return bm.get_results(min_max_scale=False, clean_names=True)


def _exact_neighbors(X: np.ndarray, k: int):
    """Exact Euclidean kNN (chunked brute force) as scib-metrics' ``NeighborsResults`` (self first)."""
    from scib_metrics.nearest_neighbors import NeighborsResults

    from scfmkit._knn import knn_search

    dist, idx = knn_search(X, X, min(k, X.shape[0]), show_progress=False)
    return NeighborsResults(indices=idx, distances=dist)


def _neighbor_computer(neighbors):
    if neighbors == "pynndescent":
        return None  # Benchmarker's default
    if neighbors == "exact":
        return _exact_neighbors
    if callable(neighbors):
        return neighbors
    msg = f"`neighbors` must be 'pynndescent', 'exact' or a callable (X, k) -> NeighborsResults, got {neighbors!r}."
    raise ValueError(msg)


def _tidy(res: pd.DataFrame) -> pd.DataFrame:
    types = res.loc["Metric Type"]
    body = res.drop(index="Metric Type")
    rows = [
        {"embedding": emb, "metric": col, "metric_type": types[col], "value": float(body.loc[emb, col])}
        for emb in body.index
        for col in body.columns
    ]
    return pd.DataFrame(rows)


def integration(
    adata: AnnData | MuData,
    embeddings: Sequence[str] | None = None,
    *,
    batch_key: str,
    label_key: str,
    baselines: Sequence[str] = ("random", "pca"),
    layer: str | None = None,
    pre_integrated_key: str | None = None,
    n_comps: int = 50,
    bio_metrics: Any | None = None,
    batch_metrics: Any | None = None,
    chunk_size: int = 256,
    neighbors: str | Any = "pynndescent",
    n_boot: int = 0,
    boot_frac: float = 0.5,
    ci: float = 0.95,
    n_jobs: int = 1,
    solver: str = "arpack",
    rng: int | np.random.Generator | None = 0,
    mod: str | None = "rna",
) -> pd.DataFrame:
    """Score embeddings for batch correction and bio conservation with :class:`scib_metrics.benchmark.Benchmarker`.

    Runs the library's own metrics and aggregate scores (``Bio conservation``, ``Batch correction`` and
    ``Total = 0.6 bio + 0.4 batch``, not min-max scaled) on a private container, so nothing is written into
    ``adata`` (Benchmarker's ``prepare`` would otherwise add ``obsm['X_pca']``).

    Parameters
    ----------
    adata
        Cells with the embeddings in ``obsm`` (a MuData is read in modality ``mod``, or itself with ``mod=None``).
    embeddings
        ``obsm`` keys to score (default: every ``X_*`` key except 2-d layouts such as ``X_umap``).
    batch_key, label_key
        ``obs`` columns with batch and cell-type labels.
    baselines
        Reference rows added unless already among ``embeddings``: ``"random"`` adds ``"Random (floor)"``, a
        standard-Gaussian cells x ``n_comps`` matrix (what scores look like with no information; skipped when
        ``"X_random"`` is scored); ``"pca"`` adds ``"PCA (unintegrated)"``, the unintegrated embedding that
        Benchmarker uses for PCR comparison (skipped when ``pre_integrated_key`` is scored). Pass ``()`` to score
        only ``embeddings``.
    layer
        Layer with the log-normalised (or raw count, normalised + log1p on a copy) values for the unintegrated PCA.
    pre_integrated_key
        ``obsm`` key of an existing unintegrated embedding to use instead of computing the PCA.
    n_comps
        Components of the unintegrated PCA (Benchmarker uses scanpy's default, 50) and dims of the random floor.
    bio_metrics, batch_metrics
        :class:`scib_metrics.benchmark.BioConservation` / :class:`~scib_metrics.benchmark.BatchCorrection`
        (default: the library's defaults, with ``chunk_size`` for the silhouette metrics).
    chunk_size
        Cells per block in scib-metrics' silhouette distance computations (memory bound).
    neighbors
        ``"pynndescent"`` (Benchmarker's default, approximate), ``"exact"`` (chunked brute-force Euclidean kNN,
        ``scfmkit._knn.knn_search``; no numba compilation, good below ~20,000 cells) or a callable
        ``(X, k) -> scib_metrics.nearest_neighbors.NeighborsResults``.
    n_boot
        Number of resamples for intervals (0: none). Each resample scores a random ``boot_frac`` of cells drawn
        without replacement (bootstrap duplicates would be each other's zero-distance neighbours and bias every kNN
        metric). Deviations from the resample mean are scaled by ``sqrt(boot_frac / (1 - boot_frac))`` (1 for
        half-samples, whose variance matches the full sample's for smooth statistics) and added to the full-data
        score: a ``ci`` interval centred on it. Resamples are shared by all embeddings (paired), stored in
        ``result.attrs['replicates']`` (a dict of lists: ``pd.DataFrame(result.attrs['replicates'])``).
    boot_frac
        Share of cells per resample, in (0, 1).
    ci
        Interval coverage.
    n_jobs
        Threads for pynndescent neighbour search.
    solver
        SVD solver of the unintegrated PCA (Benchmarker's default ``"arpack"``).
    rng
        Seed for the random floor, PCA and resamples. ``rng=None`` draws fresh (unseeded) randomness; the
        default 0 makes runs reproducible.
    mod
        Modality of a MuData; ``None`` scores the MuData's own ``obs``/``obsm`` (joint embeddings such as WNN, and
        modality embeddings mirrored as ``'<mod>:<key>'``), which needs ``pre_integrated_key``.

    Returns
    -------
    Tidy :class:`pandas.DataFrame` with columns ``embedding``, ``metric``, ``metric_type`` (``Bio conservation``,
    ``Batch correction`` or ``Aggregate score``), ``value`` and, with ``n_boot > 0``, ``ci_low``, ``ci_high``,
    ``se``. ``attrs`` holds ``batch_key``, ``label_key``, ``n_cells``, ``baselines`` (the added rows).
    """
    from scib_metrics.benchmark import BatchCorrection, BioConservation

    _neighbor_computer(neighbors)  # validate early
    if is_mudata(adata) and mod is None:  # the MuData's own obs/obsm: joint embeddings, 'rna:X_pca' mirrors
        if pre_integrated_key is None:
            pcs = [k for k in adata.obsm if "pca" in k.lower()]
            example = f", e.g. {pcs[0]!r}" if pcs else ""
            msg = (
                "Scoring a MuData's own obsm (`mod=None`) needs `pre_integrated_key=`, the obsm key of the "
                f"unintegrated embedding (a MuData has no X to compute a PCA from){example}."
            )
            raise ValueError(msg)
        target = adata
    else:
        target = get_modality(adata, mod)
    for key, what in ((batch_key, "batch_key"), (label_key, "label_key")):
        if key not in target.obs:
            msg = f"{what} {key!r} is not an obs column; available: {list(target.obs.columns)}."
            raise KeyError(msg)
    if embeddings is None:
        embeddings = [k for k in target.obsm if k.startswith("X_") and k not in _SKIP_DEFAULT]
    elif isinstance(embeddings, str):
        embeddings = [embeddings]
    embeddings = list(dict.fromkeys(embeddings))
    missing = [k for k in embeddings if k not in target.obsm]
    if missing:
        msg = f"obsm keys {missing} not found; available: {list(target.obsm)}. Compute them first."
        raise KeyError(msg)
    bad = [b for b in baselines if b not in ("random", "pca")]
    if bad:
        msg = f"Unknown baselines {bad}; use any of ('random', 'pca') or ()."
        raise ValueError(msg)
    for key in embeddings:
        emb = np.asarray(target.obsm[key])
        if emb.ndim != 2 or not np.isfinite(emb).all():
            msg = f"obsm[{key!r}] must be a finite 2-d array (cells missing from a MuData modality give NaN rows)."
            raise ValueError(msg)
    if not embeddings and not baselines:
        msg = "Nothing to score: pass `embeddings=` or keep `baselines`."
        raise ValueError(msg)
    if n_boot and not 0 < boot_frac < 1:
        msg = f"`boot_frac` must be in (0, 1), got {boot_frac}."
        raise ValueError(msg)
    if target.obs[label_key].isna().any() or target.obs[batch_key].isna().any():
        msg = f"obs[{label_key!r}] and obs[{batch_key!r}] must have no missing values; subset the cells first."
        raise ValueError(msg)

    seed = as_seed(rng)
    gen = np.random.default_rng(seed)
    for key, what, fix in (
        (batch_key, "batches", "batch-correction metrics compare batches"),
        (label_key, "labels", "biological-conservation metrics compare cell types"),
    ):
        if target.obs[key].nunique() < 2:
            msg = (
                f"obs[{key!r}] has a single value, but scib-metrics needs at least 2 {what} ({fix}). Pass the column "
                "that distinguishes them, or score a dataset that has them."
            )
            raise ValueError(msg)
    cont = _container(target, embeddings, batch_key, label_key)
    if pre_integrated_key is not None:
        if pre_integrated_key not in target.obsm:
            msg = f"pre_integrated_key {pre_integrated_key!r} is not in obsm; available: {list(target.obsm)}."
            raise KeyError(msg)
        cont.obsm[_PRE] = np.asarray(target.obsm[pre_integrated_key])
    else:
        cont.obsm[_PRE] = _pre_integrated_pca(target, layer, n_comps=n_comps, seed=seed, solver=solver)
    keys = list(embeddings)
    added = []
    if "random" in baselines and "X_random" not in embeddings:
        cont.obsm[RANDOM] = np.random.default_rng(seed).standard_normal((target.n_obs, n_comps)).astype(np.float32)
        keys.append(RANDOM)
        added.append(RANDOM)
    if "pca" in baselines and pre_integrated_key not in embeddings:
        cont.obsm[PCA] = cont.obsm[_PRE]
        keys.append(PCA)
        added.append(PCA)

    bio = bio_metrics if bio_metrics is not None else BioConservation(silhouette_label={"chunk_size": chunk_size})
    batch = batch_metrics if batch_metrics is not None else BatchCorrection(bras={"chunk_size": chunk_size})
    # a collection with every metric switched off is "none" for Benchmarker (it would fail on the missing type)
    bio, batch = (m if any(v is not False for v in asdict(m).values()) else None for m in (bio, batch))
    if bio is None and batch is None:
        msg = "Every metric is switched off; enable at least one in `bio_metrics` or `batch_metrics`."
        raise ValueError(msg)
    res = _tidy(_run_benchmarker(cont, keys, batch_key, label_key, bio, batch, n_jobs, solver, neighbors))

    if n_boot:
        from scfmkit._utils import progress

        m = max(2, round(boot_frac * cont.n_obs))
        reps = []
        for b in progress(range(n_boot), total=n_boot, desc="resamples", unit="resample"):
            idx = np.sort(gen.choice(cont.n_obs, m, replace=False))
            sub = cont[idx].copy()
            rep = _tidy(_run_benchmarker(sub, keys, batch_key, label_key, bio, batch, n_jobs, solver, neighbors))
            rep["replicate"] = b
            reps.append(rep)
        reps = pd.concat(reps, ignore_index=True)
        scale = np.sqrt(boot_frac / (1 - boot_frac))
        dev = reps["value"] - reps.groupby(["embedding", "metric"])["value"].transform("mean")
        reps["deviation"] = dev * scale
        alpha = (1 - ci) / 2
        q = reps.groupby(["embedding", "metric"])["deviation"].quantile([alpha, 1 - alpha]).unstack()
        q.columns = ["lo", "hi"]
        se = reps.groupby(["embedding", "metric"])["deviation"].std(ddof=1).rename("se")
        res = res.join(q, on=["embedding", "metric"]).join(se, on=["embedding", "metric"])
        res["ci_low"] = res["value"] + res.pop("lo")
        res["ci_high"] = res["value"] + res.pop("hi")
        res = res[[c for c in res.columns if c != "se"] + ["se"]]
        res.attrs["replicates"] = reps.to_dict(orient="list")
        res.attrs["n_boot"] = n_boot
        res.attrs["boot_frac"] = boot_frac
    res.attrs.update({"batch_key": batch_key, "label_key": label_key, "n_cells": int(target.n_obs), "baselines": added})
    return res


def _label_text(col: pd.Series, missing: str | None = None) -> np.ndarray:
    """Labels as text with one spelling per value: integral floats ``1.0`` read as ``"1"`` like the int ``1``."""
    values = col.astype(object).to_numpy()
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            out[i] = missing
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            out[i] = str(int(v))
        elif isinstance(v, (np.integer, np.floating, np.bool_)):
            out[i] = str(v.item())
        else:
            out[i] = str(v)
    return out


def label_transfer(
    adata: AnnData | MuData,
    true_key: str,
    pred_key: str,
    *,
    unknown: str = "Unknown",
    mod: str | None = "rna",
) -> pd.DataFrame:
    """Accuracy, macro-F1, per-class F1 and the share of ``Unknown`` of transferred labels.

    Parameters
    ----------
    adata
        Cells with true and predicted labels in ``obs`` (a MuData is read in modality ``mod``).
    true_key, pred_key
        ``obs`` columns with the true and predicted labels (cells with a missing true label are left out; a missing
        prediction counts as ``unknown``). Labels are compared as values: ``1.0`` equals ``1``. Label sets that share
        no value at all are refused (a perfect prediction would otherwise score 0).
    unknown
        The label meaning "not assigned"; it always counts as wrong.
    mod
        Modality of a MuData.

    Returns
    -------
    Tidy :class:`pandas.DataFrame` with columns ``metric``, ``label``, ``value``, ``support``: rows ``accuracy``
    (all cells), ``accuracy_assigned`` (cells not ``Unknown``), ``macro_f1`` (mean F1 over the true classes),
    ``unknown_share``, then ``f1`` per true class (``label`` names it; ``support`` = its number of cells).
    """
    from sklearn.metrics import f1_score

    target = get_modality(adata, mod)
    for key in (true_key, pred_key):
        if key not in target.obs:
            msg = f"{key!r} is not an obs column; available: {list(target.obs.columns)}."
            raise KeyError(msg)
    keep = target.obs[true_key].notna().to_numpy()
    if keep.sum() == 0:
        msg = f"obs[{true_key!r}] has no labels."
        raise ValueError(msg)
    y_true = _label_text(target.obs[true_key])[keep]
    y_pred = _label_text(target.obs[pred_key], missing=unknown)[keep]
    classes = sorted(set(y_true))
    predicted = set(y_pred) - {unknown}
    if predicted and not predicted & set(classes):
        msg = (
            f"obs[{pred_key!r}] and obs[{true_key!r}] share no label (e.g. {sorted(predicted)[:3]} vs {classes[:3]}); "
            "every score would be 0. Map the predictions onto the true label names first (check case and spelling)."
        )
        raise ValueError(msg)
    correct = y_true == y_pred
    assigned = y_pred != unknown
    f1 = f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    n = len(y_true)
    rows = [
        {"metric": "accuracy", "label": "all", "value": float(correct.mean()), "support": n},
        {
            "metric": "accuracy_assigned",
            "label": "all",
            "value": float(correct[assigned].mean()) if assigned.any() else float("nan"),
            "support": int(assigned.sum()),
        },
        {"metric": "macro_f1", "label": "all", "value": float(np.mean(f1)), "support": n},
        {"metric": "unknown_share", "label": "all", "value": float((~assigned).mean()), "support": n},
    ]
    counts = pd.Series(y_true).value_counts()
    rows += [
        {"metric": "f1", "label": c, "value": float(v), "support": int(counts[c])}
        for c, v in zip(classes, f1, strict=True)
    ]
    return pd.DataFrame(rows)
