"""``benchmark_perturbation``: every predictor on repeated splits, scored with every metric."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from scfmkit._utils import get_modality, logger, progress

from ._predictor import _make

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["benchmark_perturbation"]


def _method_specs(methods) -> dict[str, tuple[str, dict[str, Any]]]:
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(methods, Mapping):
        out = {}
        for label, spec in methods.items():
            spec = dict(spec)
            out[str(label)] = (str(spec.pop("method", label)), spec)
        return out
    return {str(m): (str(m), {}) for m in methods}


def benchmark_perturbation(
    adata: AnnData | MuData,
    *,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("control", "mean", "cell_mean", "additive", "linear"),
    split: str = "random",
    seeds: Iterable[int] = range(5),
    evaluate: Sequence[str] = ("test",),
    split_options: Mapping[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    replicate: bool = True,
    perturbation_key: str = "condition",
    control: str = "control",
    mod: str | None = "rna",
) -> pd.DataFrame:
    """Fit and score several predictors on repeated splits: a tidy table (method, seed, condition, metric, value).

    For each seed the pseudobulk is split with :func:`scfmkit.pp.split_perturbations` (``method=split``,
    ``rng=seed``), every method is fitted on the train conditions and scored with
    :func:`scfmkit.metrics.perturbation_metrics` on the ``evaluate`` conditions. Conditions that some method cannot
    predict (e.g. ``additive`` without both singles) are dropped for ALL methods of that seed, with a log line, so
    every method is scored on the same conditions.

    When ``adata`` holds cells, the metrics that test cells (cell-eval's DE overlap) are scored too (negative predicted
    values are set to 0 for them only, as a log1p value cannot be negative; the count is logged), and a
    ``replicate`` row is added: each scored condition's cells and the control cells are split into two halves
    (seeded from the seed; :func:`scfmkit.metrics.split_halves`) and half B is scored as the prediction of half A,
    each half with its own control cells. It is the technical ceiling (``control``, ``mean`` and ``cell_mean`` are
    the floors); :func:`scfmkit.metrics.summarize_benchmark` (also ``fm.tl.summarize_benchmark``) adds intervals,
    paired tests and normalised scores.

    Parameters
    ----------
    adata
        Cells x genes (pseudobulked here with ``perturbation_key``/``control``) or a pseudobulk from
        :func:`scfmkit.pp.pseudobulk_perturbations`. Not modified. Methods that train on cells (``needs_cells``,
        e.g. ``"scgpt"``) are fitted on these cells and need cells here.
    methods
        Predictor names, or ``{label: {"method": name, **options}}`` to compare variants
        (e.g. ``{"linear_fm": {"method": "linear", "gene_embedding": "geneformer_token"}}``).
    split
        ``"random"``, ``"simulation"`` or ``"double"``.
    seeds
        One split (and fit) per seed.
    evaluate
        Split labels scored (``"test"``; add ``"holdout"`` to score both).
    split_options
        More options of :func:`scfmkit.pp.split_perturbations` (e.g. ``test_fraction``, ``unmeasured``).
    metrics
        Subset of :data:`scfmkit.metrics.PERTURBATION_METRICS` (default: all; those that test cells only when
        ``adata`` holds cells).
    replicate
        Add the ``replicate`` row (needs cells).
    perturbation_key, control
        Used when ``adata`` holds cells.
    mod
        Modality of a MuData.

    Returns
    -------
    A new DataFrame with columns ``method``, ``seed``, ``condition``, ``metric``, ``value``; its ``attrs`` hold
    ``fit_seconds`` (method -> list of fit+predict times), ``dropped`` (seed -> conditions left out) and, with cells,
    ``n_true_de`` (seed -> condition -> number of cell-eval DE genes).
    """
    from scfmkit.metrics._perturbation_scoring import cell_set, perturbation_metrics
    from scfmkit.pp._perturbation import pseudobulk_perturbations, split_perturbations

    from ._replicate import score_replicate

    target = get_modality(adata, mod)
    cells = cell_data = None
    if isinstance(target.uns.get("perturbation"), dict) and "is_control" in target.obs:
        pdata = target.copy()
        if replicate:
            logger.info("`adata` is a pseudobulk: no replicate row and no DE metrics (they need the cells).")
    else:
        pdata = pseudobulk_perturbations(target, perturbation_key=perturbation_key, control=control, mod=None)
        cells = cell_set(target, pdata, mod=None)
        cell_data = target  # the cell-level AnnData, for predictors that train on cells
    specs = _method_specs(methods)
    need_cells = [label for label, (name, opts) in specs.items() if _make(name, opts).needs_cells]  # validates too
    if need_cells and cell_data is None:
        msg = (
            f"Method(s) {need_cells} train on single cells; pass the cell-level AnnData (not a pseudobulk) to "
            "`benchmark_perturbation`."
        )
        raise ValueError(msg)
    if replicate and cells is not None and "replicate" in specs:
        msg = "A method is labelled 'replicate', the name of the ceiling row; rename it or pass `replicate=False`."
        raise ValueError(msg)
    frames, times, dropped, n_true_de = [], {m: [] for m in specs}, {}, {}
    seeds = list(seeds)
    for seed in progress(seeds, desc="benchmark seeds", unit="seed"):
        split_perturbations(pdata, method=split, rng=int(seed), key_added="split", **dict(split_options or {}))
        labels = pdata.obs["split"].astype(str).to_numpy()
        train = list(pdata.obs_names[labels == "train"])
        test = [n for n, s in zip(pdata.obs_names, labels, strict=True) if s in set(evaluate)]
        fitted = {}
        for label, (name, opts) in specs.items():
            t0 = time.perf_counter()
            predictor = _make(name, opts)
            fitted[label] = predictor.fit(pdata, train, cells=cell_data if predictor.needs_cells else None)
            times[label].append(time.perf_counter() - t0)
        ok = [c for c in test if all(p.why_not(c) is None for p in fitted.values())]
        left = sorted(set(test) - set(ok))
        if left:
            logger.info("seed %s: %d condition(s) not predictable by every method, left out: %s", seed, len(left), left)
        dropped[int(seed)] = left
        if not ok:
            logger.warning("seed %s: no test condition can be predicted by every method.", seed)
            continue
        for label, pred in fitted.items():
            t0 = time.perf_counter()
            frame = pred.predict(ok)
            times[label][-1] += time.perf_counter() - t0
            scores = perturbation_metrics(pdata, frame, metrics=metrics, train=train, cells=cells, clip_negative=True)
            if scores.attrs.get("n_true_de"):
                n_true_de[int(seed)] = scores.attrs["n_true_de"]
            scores.insert(0, "seed", int(seed))
            scores.insert(0, "method", label)
            frames.append(scores)
        if replicate and cells is not None:
            scores = score_replicate(pdata, cells, ok, seed=int(seed), train=train, metrics=metrics)
            scores.insert(0, "seed", int(seed))
            scores.insert(0, "method", "replicate")
            frames.append(scores)
    cols = ["method", "seed", "condition", "metric", "value"]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    out = out[cols]
    out.attrs["fit_seconds"] = times
    out.attrs["dropped"] = dropped
    out.attrs["n_true_de"] = n_true_de
    return out
