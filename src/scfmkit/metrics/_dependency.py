"""Validation of gene dependency maps against ground truth: measured CRISPR effects or a table of known edges.

Kernels (:func:`auroc`, :func:`auprc`, :func:`score_against_truth`) take arrays; the wrappers build the ground truth
(:func:`measured_effects` from a pseudobulk of :func:`scfmkit.pp.pseudobulk_perturbations`, :func:`de_effects` from
cells, :func:`edges_truth` from a decoupler/CollecTRI-format table) and read the maps of
:func:`scfmkit.tl.gene_dependency` from ``varp``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "auprc",
    "auroc",
    "de_effects",
    "dependency_validation",
    "edges_truth",
    "measured_effects",
    "score_against_truth",
]


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (:func:`sklearn.metrics.roc_auc_score`, ties averaged); NaN with one class."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(score, np.float64)))


def auprc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision (:func:`sklearn.metrics.average_precision_score`); NaN without positives."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y_true, bool)
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, np.asarray(score, np.float64)))


def score_against_truth(
    scores: Mapping[str, np.ndarray], truth: np.ndarray, *, sources: Sequence[str], absolute: bool = True
) -> pd.DataFrame:
    """AUROC/AUPRC of several score matrices against one boolean truth, per source row and pooled.

    Parameters
    ----------
    scores
        Map name -> ``(n_sources, n_targets)`` scores (NaN: not scored).
    truth
        ``(n_sources, n_targets)`` bool (True: a known or measured effect); NaN-free.
    sources
        Row names.
    absolute
        Rank by ``|score|`` (signed scores such as log-odds changes or correlations).

    Only the entries that every map scores are used, so the maps are compared on the same pairs.

    Returns
    -------
    Tidy DataFrame: ``map``, ``source`` (``"all"`` for the pooled pairs), ``n_targets``, ``n_positive``,
    ``auroc``, ``auprc`` and ``auprc_random`` (the fraction of positives, the AUPRC of a random ranking).
    """
    mats = {k: np.abs(v) if absolute else np.asarray(v, np.float64) for k, v in scores.items()}
    ok = np.ones(truth.shape, bool)
    for v in mats.values():
        ok &= np.isfinite(v)
    rows = []
    for name, v in mats.items():
        for r, src in enumerate(sources):
            m = ok[r]
            y = truth[r, m]
            rows.append(_row(name, src, y, v[r, m]))
        rows.append(_row(name, "all", truth[ok], v[ok]))
    return pd.DataFrame(rows)


def _row(name: str, source: str, y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    return {
        "map": name,
        "source": source,
        "n_targets": int(y.size),
        "n_positive": int(y.sum()),
        "auroc": auroc(y, s) if y.size else float("nan"),
        "auprc": auprc(y, s) if y.size else float("nan"),
        "auprc_random": float(y.mean()) if y.size else float("nan"),
    }


def measured_effects(
    pdata: AnnData,
    *,
    method: str = "delta",
    threshold: float = 0.25,
    top_k: int | None = None,
) -> pd.DataFrame:
    """Ground truth from a perturbation pseudobulk: which genes move when each single gene is perturbed.

    Parameters
    ----------
    pdata
        Output of :func:`scfmkit.pp.pseudobulk_perturbations` (conditions x genes).
    method
        ``"delta"``: ``|mean change vs control| >= threshold`` (log-normalised units), or the ``top_k`` largest
        ``|change|`` per condition when ``top_k`` is given; ``"top_de"``: the condition's top DE genes
        (``layers['top_de']``, t-test as GEARS).
    threshold, top_k
        See ``method``.

    Returns
    -------
    Boolean DataFrame, perturbed genes (single-gene conditions) x measured genes; the perturbed gene itself is
    False.
    """
    info = pdata.uns.get("perturbation") if hasattr(pdata, "uns") else None
    if not isinstance(info, dict) or "delta" not in pdata.layers:
        msg = "Expected a perturbation pseudobulk; build it with `scfmkit.pp.pseudobulk_perturbations(...)`."
        raise ValueError(msg)
    if method not in {"delta", "top_de"}:
        msg = f"`method` must be 'delta' or 'top_de', got {method!r}."
        raise ValueError(msg)
    single = (pdata.obs["n_perturbed"] == 1).to_numpy()
    if not single.any():
        msg = "The pseudobulk has no single-gene perturbation; ground truth needs conditions of one gene."
        raise ValueError(msg)
    delta = np.asarray(pdata.layers["delta"], np.float64)[single]
    if method == "top_de":
        truth = np.asarray(pdata.layers["top_de"], bool)[single]
    elif top_k is not None:
        if top_k < 1:
            msg = f"`top_k` must be positive, got {top_k}."
            raise ValueError(msg)
        order = np.argsort(-np.abs(delta), axis=1, kind="stable")[:, :top_k]
        truth = np.zeros(delta.shape, bool)
        np.put_along_axis(truth, order, True, axis=1)
    else:
        truth = np.abs(delta) >= threshold
    out = pd.DataFrame(truth, index=pdata.obs["genes"].to_numpy()[single], columns=pdata.var_names.astype(str))
    for g in out.index.intersection(out.columns):
        out.loc[g, g] = False
    return out


def de_effects(
    adata: AnnData,
    *,
    perturbation_key: str = "condition",
    control: str = "control",
    fdr: float = 0.05,
    layer: str | None = None,
    counts: bool | None = None,
    target_sum: float = 1e4,
    min_cells: int = 3,
) -> pd.DataFrame:
    """Ground truth by differential expression at an FDR: Welch t-tests of each single perturbation vs control.

    Values are log-normalised first when they are counts (``target_sum`` per cell, ``log1p``), as
    :func:`scfmkit.pp.pseudobulk_perturbations` does; p-values of each condition are adjusted with
    Benjamini-Hochberg (:func:`scipy.stats.false_discovery_control`).

    Returns
    -------
    Boolean DataFrame, perturbed genes x genes: adjusted p < ``fdr`` (the perturbed gene itself False). Conditions
    with fewer than ``min_cells`` cells are left out; genes constant in both groups are never called.
    """
    from scipy.stats import false_discovery_control, ttest_ind

    from scfmkit._utils import get_matrix

    if perturbation_key not in adata.obs:
        msg = f"`perturbation_key={perturbation_key!r}` is not an obs column; available: {list(adata.obs.columns)}."
        raise KeyError(msg)
    if not 0 < fdr < 1:
        msg = f"`fdr` must be between 0 and 1, got {fdr}."
        raise ValueError(msg)
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    if control not in set(labels):
        msg = f"Control label {control!r} not in obs[{perturbation_key!r}]; pass `control=`."
        raise ValueError(msg)
    X = get_matrix(adata, layer)
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    X = X.astype(np.float64)
    if counts is None:
        sample = X[X != 0][:200_000]
        counts = bool(sample.size and np.all(sample >= 0) and np.all(np.mod(sample, 1) == 0) and sample.max() > 1)
    if counts:
        tot = X.sum(1, keepdims=True)
        X = np.log1p(np.divide(X * target_sum, tot, out=np.zeros_like(X), where=tot > 0))
    ctrl = X[labels == control]
    rows, names = [], []
    for cond in sorted(set(labels) - {control}):
        if "+" in cond:
            continue
        grp = X[labels == cond]
        if len(grp) < min_cells:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            p = ttest_ind(grp, ctrl, equal_var=False, axis=0).pvalue
        called = np.zeros(X.shape[1], bool)
        ok = np.isfinite(p)
        if ok.any():
            called[ok] = false_discovery_control(p[ok], method="bh") < fdr
        rows.append(called)
        names.append(cond)
    if not rows:
        msg = f"No single perturbation with at least {min_cells} cells in obs[{perturbation_key!r}]."
        raise ValueError(msg)
    out = pd.DataFrame(np.vstack(rows), index=names, columns=adata.var_names.astype(str))
    for g in out.index.intersection(out.columns):
        out.loc[g, g] = False
    return out


def edges_truth(
    net: pd.DataFrame,
    targets: Sequence[str],
    *,
    source: str = "source",
    target: str = "target",
    weight: str | None = "weight",
) -> pd.DataFrame:
    """Ground truth from a table of known edges (decoupler/CollecTRI format: ``source``, ``target``, ``weight``).

    Every source of the table gets a row over ``targets``: True for its listed targets (with a non-zero weight),
    False for every other gene of ``targets`` (the closed-world reading of a curated network).
    """
    missing = [c for c in (source, target) if c not in net.columns]
    if missing:
        msg = f"The edge table lacks columns {missing} (has {list(net.columns)}); pass `source=`/`target=`."
        raise KeyError(msg)
    tab = net
    if weight is not None and weight in net.columns:
        tab = net[pd.to_numeric(net[weight], errors="coerce").fillna(0) != 0]
    targets = pd.Index([str(t) for t in targets])
    srcs = sorted(set(tab[source].astype(str)))
    out = pd.DataFrame(False, index=srcs, columns=targets)
    tgt = tab[target].astype(str).to_numpy()
    src = tab[source].astype(str).to_numpy()
    keep = targets.get_indexer(tgt) >= 0
    for s, t in zip(src[keep], tgt[keep], strict=True):
        out.loc[s, t] = True
    return out


def _maps_of(adata: AnnData, key: str, maps: Sequence[str] | None) -> dict[str, str]:
    """Label -> varp key of the maps to validate (``key`` itself is labelled ``"model"``)."""
    if key not in adata.varp:
        msg = f"varp[{key!r}] not found; run `scfmkit.tl.gene_dependency` first (its `key_added`)."
        raise KeyError(msg)
    found = {"model": key} | {
        k[len(key) + 1 :]: k for k in adata.varp if k.startswith(key + "_") and k != f"{key}_n_cells"
    }
    if maps is None:
        return found
    bad = [m for m in maps if m not in found]
    if bad:
        msg = f"Maps {bad} not found under {key!r}; available: {sorted(found)}."
        raise KeyError(msg)
    return {m: found[m] for m in maps}


def dependency_validation(
    adata: AnnData,
    truth: pd.DataFrame | AnnData,
    *,
    key: str = "geneformer_dependency",
    maps: Sequence[str] | None = None,
    absolute: bool = True,
    gene_key: str | None = None,
    source: str = "source",
    target: str = "target",
    weight: str | None = "weight",
) -> pd.DataFrame:
    """AUROC and AUPRC of every dependency map of ``adata`` against a ground truth, per source gene and overall.

    Parameters
    ----------
    adata
        Data with the maps of :func:`scfmkit.tl.gene_dependency` (``varp['<key>']`` and its baselines).
    truth
        A pseudobulk of :func:`scfmkit.pp.pseudobulk_perturbations` (read with :func:`measured_effects`' defaults,
        ``|delta| >= 0.25``); a boolean sources x genes DataFrame (:func:`measured_effects`, :func:`de_effects`);
        or a table of known edges with ``source``, ``target`` (and ``weight``) columns, e.g. CollecTRI from
        decoupler (:func:`edges_truth`).
    key
        ``key_added`` of the maps.
    maps
        Which maps (labels: ``"model"``, ``"coexpression"``, ``"random"``, ``"attention"``, the other score, the
        predictor's name); default all.
    absolute
        Rank by ``|score|`` (default; signed scores and correlations count in both directions).
    gene_key
        ``var`` column with the gene names used by the truth (default ``var_names``).
    source, target, weight
        Column names of an edge table.

    Returns
    -------
    Tidy DataFrame (one row per map and source, plus ``source="all"`` for the pooled pairs): ``map``, ``source``,
    ``n_targets``, ``n_positive``, ``auroc``, ``auprc``, ``auprc_random``. Only sources that are both mapped and
    in the truth, and targets that every map scores and the truth covers, are used (the perturbed gene itself is
    left out). ``attrs['sources_missing']`` lists truth sources that were not mapped.
    """
    from anndata import AnnData as _AnnData

    from scfmkit._checks import var_names

    labels = _maps_of(adata, key, maps)
    names = var_names(adata, gene_key)
    if isinstance(truth, _AnnData):
        truth = measured_effects(truth)
    elif isinstance(truth, pd.DataFrame) and source in truth.columns and target in truth.columns:
        truth = edges_truth(truth, names, source=source, target=target, weight=weight)
    elif not isinstance(truth, pd.DataFrame):
        msg = "`truth` must be a pseudobulk AnnData, a boolean sources x genes DataFrame or an edge table."
        raise TypeError(msg)
    truth = truth.astype(bool)
    mapped = [str(s) for s in adata.uns.get(key, {}).get("sources", [])]
    if not mapped:
        first = np.asarray(adata.varp[key])
        mapped = [str(names[i]) for i in np.flatnonzero(np.isfinite(first).any(1))]
    srcs = [s for s in mapped if s in truth.index]
    missing = [s for s in truth.index if s not in set(mapped)]
    if not srcs:
        msg = (
            f"None of the mapped sources {mapped[:10]} is a source of the truth ({list(truth.index[:10])}); map "
            "the perturbed genes (`genes=` of gene_dependency)."
        )
        raise ValueError(msg)
    cols = pd.Index(names).get_indexer(truth.columns)
    tcols = np.flatnonzero(cols >= 0)
    if tcols.size == 0:
        msg = "No gene of the truth is a gene of adata; check the gene names (`gene_key=`)."
        raise ValueError(msg)
    rows = pd.Index(names).get_indexer(srcs)
    y = truth.loc[srcs].to_numpy()[:, tcols]
    scores = {}
    for label, k in labels.items():
        M = adata.varp[k]
        M = M.toarray() if sparse.issparse(M) else np.asarray(M)
        scores[label] = M[np.ix_(rows, cols[tcols])].astype(np.float64)
    self_pair = np.asarray(srcs, dtype=object)[:, None] == np.asarray(names[cols[tcols]], dtype=object)[None, :]
    for v in scores.values():
        v[self_pair] = np.nan
    out = score_against_truth(scores, y, sources=srcs, absolute=absolute)
    out.attrs["sources_missing"] = missing
    return out
