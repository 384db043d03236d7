"""Plots of integration benchmarks (scib-style table) and of reference mapping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._labels import obs_strings
from ._utils import finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["integration", "reference_mapping"]

_AGG = "Aggregate score"
_TYPE_ORDER = ("Bio conservation", "Batch correction")
_UNKNOWN = "Unknown"
_UNLABELLED = "unlabelled (NaN)"


def integration(
    results: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    sort_by: str | None = "Total",
    cmap: str = "PRGn",
    bar_cmap: str = "YlGnBu",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """The scib-metrics results table: one row per embedding, circles per metric, bars for the aggregate scores.

    Parameters
    ----------
    results
        Tidy table from :func:`scfmkit.metrics.integration` (``embedding``, ``metric``, ``metric_type``, ``value``;
        ``ci_low``/``ci_high`` are drawn as whiskers on the aggregate bars when present).
    metrics
        Individual metrics to show (default: all, grouped as bio conservation then batch correction). The aggregate
        scores are always shown.
    sort_by
        Column to sort rows by, best first (default ``"Total"``; ``None`` keeps the table order).
    cmap
        Colormap of the metric circles (each column scaled to its own range, as in scib-metrics' table).
    bar_cmap
        Colormap of the aggregate bars (scaled 0-1).
    ax
        Axes to draw into (default: a new figure sized to the table).
    show
        Show the figure (default: when ``return_fig`` is false).
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The figure when ``return_fig=True``, else ``None``. Baseline rows (random floor, unintegrated PCA) are labelled in
    grey italics.
    """
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    need = {"embedding", "metric", "metric_type", "value"}
    if not isinstance(results, pd.DataFrame) or not need <= set(results.columns):
        msg = f"`results` must be the DataFrame from fm.metrics.integration (columns {sorted(need)})."
        raise ValueError(msg)
    wide = results.pivot_table(index="embedding", columns="metric", values="value", sort=False)
    types = results.drop_duplicates("metric").set_index("metric")["metric_type"]
    agg_cols = [c for c in ("Bio conservation", "Batch correction", "Total") if c in wide.columns]
    agg_cols += [c for c in wide.columns if types.get(c) == _AGG and c not in agg_cols]
    metric_cols = [c for t in _TYPE_ORDER for c in wide.columns if types.get(c) == t]
    metric_cols += [c for c in wide.columns if c not in metric_cols and c not in agg_cols]
    if metrics is not None:
        missing = [m for m in metrics if m not in metric_cols]
        if missing:
            msg = f"metrics {missing} are not in the results; available: {metric_cols}."
            raise ValueError(msg)
        metric_cols = list(metrics)
    if sort_by is not None:
        if sort_by not in wide.columns:
            msg = f"sort_by {sort_by!r} is not a metric of the results; use one of {list(wide.columns)} or None."
            raise ValueError(msg)
        wide = wide.sort_values(sort_by, ascending=False)
    lo = hi = None
    if {"ci_low", "ci_high"} <= set(results.columns):
        lo = results.pivot_table(index="embedding", columns="metric", values="ci_low", sort=False).reindex(wide.index)
        hi = results.pivot_table(index="embedding", columns="metric", values="ci_high", sort=False).reindex(wide.index)
    baselines = set(results.attrs.get("baselines", [])) | {"X_random"}

    n_rows, n_m, n_a = len(wide), len(metric_cols), len(agg_cols)
    label_w, agg_w = 2.6, 1.6
    width = label_w + n_m * 0.9 + n_a * agg_w + 0.3
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(width, 4.0), 1.6 + 0.45 * n_rows))
    else:
        fig = ax.figure
    ax.set_xlim(0, width)
    ax.set_ylim(n_rows + 1.4, -1.0)
    ax.axis("off")
    circ_cmap = mpl.colormaps[cmap]
    bcmap = mpl.colormaps[bar_cmap]
    y_of = {emb: i + 1 for i, emb in enumerate(wide.index)}

    for emb, y in y_of.items():
        base = emb in baselines
        ax.text(
            0.05,
            y,
            emb,
            va="center",
            ha="left",
            fontsize=9,
            fontweight="normal" if base else "bold",
            fontstyle="italic" if base else "normal",
            color="0.45" if base else "k",
        )
        if y > 1:
            ax.plot([0, width], [y - 0.5, y - 0.5], color="0.85", lw=0.6, ls=(0, (1, 4)))
    # individual metrics: circles coloured within each column
    for j, col in enumerate(metric_cols):
        x = label_w + j * 0.9 + 0.45
        vals = wide[col].to_numpy(dtype=float)
        finite = vals[np.isfinite(vals)]
        vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        norm = mpl.colors.Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-9)
        ax.text(x, 0.4, col.replace(" ", "\n", 1), ha="center", va="bottom", fontsize=7.5)
        for emb, v in zip(wide.index, vals, strict=True):
            if not np.isfinite(v):
                continue
            c = circ_cmap(0.15 + 0.7 * norm(v))
            ax.scatter([x], [y_of[emb]], s=420, color=c, edgecolor="0.3", linewidth=0.4, zorder=2)
            lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
            ax.text(x, y_of[emb], f"{v:.2f}", ha="center", va="center", fontsize=7, zorder=3,
                    color="white" if lum < 0.5 else "black")  # fmt: skip
    # group headers
    for t in (*_TYPE_ORDER, None):
        cols = [c for c in metric_cols if (types.get(c) == t if t else types.get(c) not in _TYPE_ORDER)]
        if not cols:
            continue
        x0 = label_w + metric_cols.index(cols[0]) * 0.9
        x1 = x0 + len(cols) * 0.9
        ax.plot([x0 + 0.05, x1 - 0.05], [-0.3, -0.3], color="k", lw=0.8)
        ax.text((x0 + x1) / 2, -0.38, t or "Other", ha="center", va="bottom", fontsize=9, fontweight="bold")
    # aggregate scores: bars
    x_agg = label_w + n_m * 0.9 + 0.15
    if n_a:
        ax.plot([x_agg, x_agg + n_a * agg_w - 0.1], [-0.3, -0.3], color="k", lw=0.8)
        ax.text(x_agg + n_a * agg_w / 2, -0.38, "Aggregate score", ha="center", va="bottom", fontsize=9,
                fontweight="bold")  # fmt: skip
        ax.plot([x_agg - 0.08, x_agg - 0.08], [0.5, n_rows + 0.5], color="k", lw=0.8)
    for j, col in enumerate(agg_cols):
        x0 = x_agg + j * agg_w
        bar_len = agg_w - 0.5
        ax.text(x0 + bar_len / 2, 0.4, col.replace(" ", "\n", 1), ha="center", va="bottom", fontsize=7.5)
        for emb in wide.index:
            v = float(wide.loc[emb, col])
            y = y_of[emb]
            if not np.isfinite(v):
                continue
            vv = min(max(v, 0.0), 1.0)
            ax.barh(y, vv * bar_len, left=x0, height=0.6, color=bcmap(0.15 + 0.75 * vv), edgecolor="none", zorder=2)
            end = vv
            if lo is not None and col in lo.columns and np.isfinite(lo.loc[emb, col]):
                a, b = float(lo.loc[emb, col]), float(hi.loc[emb, col])
                ax.plot([x0 + max(a, 0) * bar_len, x0 + min(b, 1) * bar_len], [y, y], color="k", lw=1.0, zorder=3)
                end = max(vv, min(b, 1.0))
            ax.text(x0 + end * bar_len + 0.05, y, f"{v:.2f}", va="center", ha="left", fontsize=7.5, zorder=3)
    if lo is not None:
        ax.text(width - 0.05, n_rows + 1.1, "whiskers: bootstrap interval", ha="right", va="center", fontsize=7,
                color="0.4")  # fmt: skip
    return finish(fig, show, return_fig)


def _embedding(adata: AnnData, key: str, what: str) -> np.ndarray:
    if key not in adata.obsm:
        msg = (
            f"obsm[{key!r}] is missing in the {what}. Compute a reference layout first "
            "(sc.pp.neighbors(reference, use_rep=...); sc.tl.umap(reference)), then run fm.tl.map_to_reference, "
            "which places the query on it as obsm['X_umap_ref']."
        )
        raise KeyError(msg)
    emb = np.asarray(adata.obsm[key])
    if emb.ndim != 2 or emb.shape[1] < 2:
        msg = f"obsm[{key!r}] must have at least 2 columns."
        raise ValueError(msg)
    return emb[:, :2]


def reference_mapping(
    adata: AnnData,
    reference: AnnData,
    *,
    label_key: str,
    basis: str = "X_umap",
    query_basis: str = "X_umap_ref",
    show_reference_labels: bool = True,
    size: float | None = None,
    panel_size: tuple[float, float] = (4.2, 3.8),
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Query cells over the reference layout, coloured by predicted label and by uncertainty.

    Parameters
    ----------
    adata
        Query after :func:`scfmkit.tl.map_to_reference` (``obs['<label_key>_pred']``,
        ``obs['<label_key>_uncertainty']``, ``obsm[query_basis]``).
    reference
        The reference with ``obsm[basis]`` and ``obs[label_key]``.
    label_key
        The transferred label.
    basis
        Reference layout (``obsm`` key).
    query_basis
        Query positions on that layout (``obsm`` key written by :func:`~scfmkit.tl.map_to_reference`).
    show_reference_labels
        Add a first panel with the reference coloured by its labels.
    size
        Marker size (default scales with the number of cells).
    panel_size
        Width and height of one panel in inches.
    show
        Show the figure (default: when ``return_fig`` is false).
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The figure when ``return_fig=True``, else ``None``. Reference cells are drawn in light grey under the query
    panels; ``Unknown`` predictions (and missing ones) in black; reference cells without a label (NaN) in grey as
    ``unlabelled (NaN)``.
    """
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    pred_key, unc_key = f"{label_key}_pred", f"{label_key}_uncertainty"
    for key in (pred_key, unc_key):
        if key not in adata.obs:
            msg = f"obs[{key!r}] is missing in the query; run fm.tl.map_to_reference(..., label_key={label_key!r})."
            raise KeyError(msg)
    if label_key not in reference.obs:
        msg = f"label_key {label_key!r} is not a reference obs column."
        raise KeyError(msg)
    r_xy = _embedding(reference, basis, "reference")
    q_xy = _embedding(adata, query_basis, "query")
    r_lab = obs_strings(reference.obs, label_key, what="reference label_key", fill=_UNLABELLED)
    q_pred = obs_strings(adata.obs, pred_key, what="predicted label", fill=_UNKNOWN)
    q_unc = adata.obs[unc_key].to_numpy(dtype=float)
    cats = sorted((set(r_lab) - {_UNLABELLED}) | (set(q_pred) - {_UNKNOWN}))
    palette = mpl.colormaps["tab20" if len(cats) > 10 else "tab10"]
    colors = {c: palette(i % palette.N) for i, c in enumerate(cats)}
    colors[_UNKNOWN] = (0.0, 0.0, 0.0, 1.0)
    colors[_UNLABELLED] = (0.6, 0.6, 0.6, 1.0)
    s = size if size is not None else max(2.0, min(30.0, 12000 / (len(r_xy) + len(q_xy))))

    n_panels = 3 if show_reference_labels else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(panel_size[0] * n_panels + 1.5, panel_size[1]))
    axes = list(np.atleast_1d(axes))
    if show_reference_labels:
        ax = axes.pop(0)
        ax.scatter(*r_xy.T, s=s, c=[colors[c] for c in r_lab], linewidths=0, rasterized=True)
        ax.set_title(f"reference: {label_key}")
    ax_pred, ax_unc = axes
    for ax in (ax_pred, ax_unc):
        ax.scatter(*r_xy.T, s=s, c="0.88", linewidths=0, rasterized=True)
    ax_pred.scatter(*q_xy.T, s=s * 1.3, c=[colors[c] for c in q_pred], linewidths=0, rasterized=True)
    ax_pred.set_title(f"query: predicted {label_key}")
    sc_ = ax_unc.scatter(*q_xy.T, s=s * 1.3, c=q_unc, cmap="magma_r", vmin=0, vmax=1, linewidths=0, rasterized=True)
    ax_unc.set_title("query: uncertainty")
    fig.colorbar(sc_, ax=ax_unc, fraction=0.046, pad=0.02)
    for ax in fig.axes[:n_panels]:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{basis.removeprefix('X_')}1")
        ax.set_ylabel(f"{basis.removeprefix('X_')}2")
    present = [c for c in cats if c in set(r_lab) | set(q_pred)] + ([_UNKNOWN] if _UNKNOWN in set(q_pred) else [])
    if show_reference_labels and _UNLABELLED in set(r_lab):
        present.append(_UNLABELLED)
    handles = [mpl.lines.Line2D([], [], ls="", marker="o", color=colors[c], label=c) for c in present]
    ax_pred.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=7)
    fig.tight_layout()
    return finish(fig, show, return_fig)
