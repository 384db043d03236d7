"""Plots of perturbation-prediction benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._utils import finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure

__all__ = ["perturbation_metrics", "perturbation_scatter"]


def perturbation_metrics(
    data: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    kind: str = "box",
    summary: pd.DataFrame | bool | None = None,
    baselines: Sequence[str] = ("control", "mean", "cell_mean"),
    ceiling: str = "replicate",
    ncols: int = 4,
    panel_size: tuple[float, float] = (3.2, 2.8),
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """One panel per metric: per-condition values of every method, with floor, ceiling, intervals and tests.

    Each panel shows the values of every method as box (+ points) or strip plots and, from the summary of
    :func:`scfmkit.metrics.summarize_benchmark` (seed ``"all"`` when there are several seeds): each method's mean with
    its bootstrap interval (black bar), the best baseline's mean (the floor, grey dotted line), the ``ceiling`` row's
    mean and interval (the split-half replicate, green dashed line and band), and above every other method ``*`` when
    it differs significantly from the best baseline (Wilcoxon over conditions) or ``n.s.`` when it does not. The
    title carries the metric's direction (from the metric table) and says when the metric cannot discriminate on the
    data (its ceiling is not significantly better than its floor).

    Parameters
    ----------
    data
        Tidy table from :func:`scfmkit.tl.benchmark_perturbation` (``method``, ``seed``, ``condition``, ``metric``,
        ``value``).
    metrics
        Metrics to show (default: all in ``data``, in table order).
    methods
        Methods and their order (default: table order).
    kind
        ``"box"`` (box plot with the points over it) or ``"strip"`` (points and the mean as a bar).
    summary
        A table from :func:`scfmkit.metrics.summarize_benchmark`; ``None`` computes it here (its defaults, bootstrap
        seed 0) when ``data`` has the columns ``seed`` and ``condition``; ``False`` draws the values only.
    baselines, ceiling
        Method names of the floors and of the replicate (as in :func:`scfmkit.metrics.summarize_benchmark`).
    ncols
        Panels per row.
    panel_size
        Width and height of one panel in inches.
    show
        Show the figure (default: when ``return_fig`` is False).
    return_fig
        Return the matplotlib figure.

    Returns
    -------
    The figure if ``return_fig``, else ``None``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    from scfmkit.metrics._summary import summarize_benchmark
    from scfmkit.metrics._table import PERTURBATION_METRIC_TABLE

    need = {"method", "metric", "value"}
    if not need <= set(data.columns):
        msg = f"`data` needs the columns {sorted(need)} (a table from `scfmkit.tl.benchmark_perturbation`)."
        raise ValueError(msg)
    if kind not in {"box", "strip"}:
        msg = f"`kind` must be 'box' or 'strip', got {kind!r}."
        raise ValueError(msg)
    metrics = list(pd.unique(data["metric"])) if metrics is None else list(metrics)
    methods = list(pd.unique(data["method"])) if methods is None else list(methods)
    if not metrics or not methods:
        msg = "Nothing to plot: `data` has no metrics or methods."
        raise ValueError(msg)
    if summary is None and {"seed", "condition"} <= set(data.columns):
        shown = data[data["metric"].isin(metrics)]
        shown.attrs = dict(data.attrs)
        summary = summarize_benchmark(shown, baselines=baselines, ceiling=ceiling, rng=0)
    elif summary is None or summary is False:
        summary = None
    if summary is not None:
        seeds = list(pd.unique(summary["seed"]))
        pick = "all" if "all" in seeds else seeds[0]
        summary = summary[summary["seed"] == pick].set_index(["metric", "method"])
    ncols = max(1, min(ncols, len(metrics)))
    nrows = int(np.ceil(len(metrics) / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False, layout="constrained"
    )
    rng = np.random.default_rng(0)  # jitter only
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        sub = data[data["metric"] == metric]
        vals = [sub.loc[sub["method"] == m, "value"].dropna().to_numpy(float) for m in methods]
        pos = np.arange(len(methods))
        if kind == "box":
            ax.boxplot(
                [v if v.size else [np.nan] for v in vals],
                positions=pos,
                widths=0.6,
                showfliers=False,
                medianprops={"color": "black"},
            )
        for i, v in enumerate(vals):
            x = pos[i] + rng.uniform(-0.18, 0.18, size=v.size)
            ax.scatter(x, v, s=9, alpha=0.6, color=colors[i % len(colors)], linewidths=0)
            if kind == "strip" and v.size:
                ax.hlines(v.mean(), pos[i] - 0.3, pos[i] + 0.3, color="black")
        spec = PERTURBATION_METRIC_TABLE.get(metric)
        title = metric if spec is None else f"{metric} ({'higher' if spec.higher_is_better else 'lower'} is better)"
        if summary is not None:
            title = _draw_summary(ax, summary, metric, methods, pos, ceiling, title, blended_transform_factory)
        ax.set_xticks(pos, methods, rotation=45, ha="right")
        ax.set_title(title, fontsize=9)
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_visible(False)
    return finish(fig, show, return_fig)


def _draw_summary(ax, summary, metric, methods, pos, ceiling, title, blended):
    rows = {m: summary.loc[(metric, m)] for m in methods if (metric, m) in summary.index}
    if not rows:
        return title
    trans = blended(ax.transData, ax.transAxes)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.15 * (hi - lo))  # room for the test marks above the data
    for i, m in enumerate(methods):
        r = rows.get(m)
        if r is None or not np.isfinite(r["mean"]):
            continue
        lo, hi = r["ci_low"], r["ci_high"]
        err = None if not (np.isfinite(lo) and np.isfinite(hi)) else [[r["mean"] - lo], [hi - r["mean"]]]
        ax.errorbar(pos[i] + 0.36, r["mean"], yerr=err, fmt="D", ms=3, color="black", capsize=2, lw=1)
        best = r["baseline"]
        if m != best and m != ceiling and isinstance(best, str) and np.isfinite(r["p_value"]):
            ax.text(
                pos[i],
                0.99,
                "*" if bool(r["significant"]) else "n.s.",
                transform=trans,
                ha="center",
                va="top",
                fontsize=7,
            )
    any_row = next(iter(rows.values()))
    best = any_row["baseline"]
    if isinstance(best, str) and best in rows:
        ax.axhline(rows[best]["mean"], color="grey", ls=":", lw=1, label=f"floor ({best})")
    if ceiling in rows and np.isfinite(rows[ceiling]["mean"]):
        r = rows[ceiling]
        ax.axhline(r["mean"], color="tab:green", ls="--", lw=1, label="ceiling (replicate)")
        if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
            ax.axhspan(r["ci_low"], r["ci_high"], color="tab:green", alpha=0.08, lw=0)
    disc = any_row["discriminates"]
    if disc is not pd.NA and disc is not None and not bool(disc):
        note = str(any_row["note"])
        title += "\ntoo few conditions to test" if note.startswith("too few") else "\ncannot discriminate here"
    return title


def perturbation_scatter(
    adata: AnnData,
    condition: str,
    *,
    layers: str | Sequence[str] = "pred_linear",
    genes: str | Sequence[str] | None = None,
    label_top: int = 5,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Predicted vs observed change to control of one condition, one panel per prediction layer.

    Parameters
    ----------
    adata
        Pseudobulk with predictions (layers written by :func:`scfmkit.tl.predict_perturbation`).
    condition
        Row to plot.
    layers
        Prediction layer(s).
    genes
        ``None`` (all genes), ``"de"`` (the condition's top DE genes) or a list of gene names.
    label_top
        Label the genes with the largest observed change.
    show
        Show the figure (default: when ``return_fig`` is False).
    return_fig
        Return the matplotlib figure.

    Returns
    -------
    The figure if ``return_fig``, else ``None``. Each panel shows the Pearson correlation of the changes.
    """
    import matplotlib.pyplot as plt

    layers = [layers] if isinstance(layers, str) else list(layers)
    if condition not in adata.obs_names:
        msg = f"Condition {condition!r} is not a row of `adata`."
        raise KeyError(msg)
    missing = [lay for lay in layers if lay not in adata.layers]
    if missing:
        msg = f"Layers {missing} not found (available: {list(adata.layers)}); run `scfmkit.tl.predict_perturbation`."
        raise KeyError(msg)
    if "control_mean" not in adata.var:
        msg = "`adata` is not a perturbation pseudobulk (no var['control_mean'])."
        raise ValueError(msg)
    row = adata.obs_names.get_loc(condition)
    ctrl = adata.var["control_mean"].to_numpy(float)
    X = adata.X[row]
    obs_delta = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=float).ravel() - ctrl
    names = np.asarray(adata.var_names)
    if genes is None:
        idx = np.arange(adata.n_vars)
    elif isinstance(genes, str) and genes == "de":
        de = adata.uns.get("perturbation", {}).get("top_de_genes", {}).get(condition, [])
        idx = adata.var_names.get_indexer(list(de))
        idx = idx[idx >= 0]
    else:
        idx = adata.var_names.get_indexer(list(genes))
        if (idx < 0).any():
            msg = f"Genes not in `adata`: {list(np.asarray(genes)[idx < 0][:5])}."
            raise KeyError(msg)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.4), squeeze=False, layout="constrained")
    for ax, lay in zip(axes.ravel(), layers, strict=True):
        pred_delta = np.asarray(adata.layers[lay][row], dtype=float).ravel() - ctrl
        if np.isnan(pred_delta).all():
            ax.text(0.5, 0.5, f"{condition} not predicted", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(lay)
            continue
        x, y = obs_delta[idx], pred_delta[idx]
        ax.scatter(x, y, s=10, alpha=0.7, linewidths=0)
        lim = np.nanmax(np.abs(np.concatenate([x, y]))) if x.size else 1.0
        lim = lim * 1.05 if lim > 0 else 1.0
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, ls="--")
        ax.axhline(0, color="lightgrey", lw=0.6)
        ax.axvline(0, color="lightgrey", lw=0.6)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.corrcoef(x, y)[0, 1] if x.size > 1 and np.std(y) > 0 and np.std(x) > 0 else np.nan
        ax.set_title(f"{lay}  (r = {r:.2f})", fontsize=10)
        for j in np.argsort(-np.abs(x))[:label_top]:
            ax.annotate(names[idx][j], (x[j], y[j]), fontsize=7)
        ax.set_xlabel(f"observed change ({condition})")
        ax.set_ylabel("predicted change")
    return finish(fig, show, return_fig)
