"""Plots of gene dependency maps: the clustered sources x targets heatmap and "what depends on this gene"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._utils import finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure

__all__ = ["gene_dependency", "gene_dependents"]


def _matrix(adata: AnnData, key: str) -> np.ndarray:
    if key not in adata.varp:
        msg = f"varp[{key!r}] not found; run `scfmkit.tl.gene_dependency` first (or pass its `key_added`)."
        raise KeyError(msg)
    M = adata.varp[key]
    return np.asarray(M.toarray() if sparse.issparse(M) else M, np.float64)


def _sources(adata: AnnData, key: str, M: np.ndarray) -> list[int]:
    names = list(adata.var_names.astype(str))
    listed = adata.uns.get(key, {}).get("sources") if isinstance(adata.uns.get(key), dict) else None
    if listed is not None and len(listed):
        return [names.index(str(s)) for s in listed if str(s) in names]
    return list(np.flatnonzero(np.isfinite(M).any(1)))


def _leaf_order(X: np.ndarray) -> np.ndarray:
    """Order of the rows of ``X`` by average-linkage clustering (NaN as 0); as given for fewer than 3 rows."""
    if X.shape[0] < 3:
        return np.arange(X.shape[0])
    from scipy.cluster.hierarchy import leaves_list, linkage

    return leaves_list(linkage(np.nan_to_num(X), method="average", optimal_ordering=True))


def gene_dependency(
    adata: AnnData,
    *,
    key: str = "geneformer_dependency",
    genes: Sequence[str] | None = None,
    n_targets: int = 30,
    absolute: bool = True,
    cluster: bool = True,
    cmap: str | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Clustered heatmap of a dependency map: source genes (rows) x their strongest targets (columns), labelled.

    Parameters
    ----------
    adata
        Data with ``varp[key]`` from :func:`scfmkit.tl.gene_dependency` (or any of its baselines, e.g.
        ``key="geneformer_dependency_coexpression"``).
    key
        The ``varp`` key of the map.
    genes
        Source genes to show (default: every source of the map).
    n_targets
        Targets shown: those with the largest ``|score|`` (or score) over the sources.
    absolute
        Rank targets by ``|score|``; the colours always show the signed score.
    cluster
        Order rows and columns by hierarchical clustering (average linkage).
    cmap
        Colour map (default: ``"viridis"`` for non-negative maps, ``"RdBu_r"`` centred at 0 otherwise).
    figsize
        Figure size (default from the number of genes).
    show, return_fig
        As in the other plots.

    Returns
    -------
    The figure if ``return_fig``, else ``None``.
    """
    import matplotlib.pyplot as plt

    M = _matrix(adata, key)
    names = np.asarray(adata.var_names.astype(str))
    rows = _sources(adata, key, M)
    if genes is not None:
        pos = {n: i for i, n in enumerate(names)}
        bad = [g for g in genes if g not in pos or pos[g] not in set(rows)]
        if bad:
            msg = f"Genes {bad} are not sources of varp[{key!r}]; sources: {[names[i] for i in rows][:20]}."
            raise ValueError(msg)
        rows = [pos[g] for g in genes]
    if not rows:
        msg = f"varp[{key!r}] has no source rows with values."
        raise ValueError(msg)
    block = M[rows]
    finite = np.isfinite(block)
    strength = np.where(finite, np.abs(block) if absolute else block, -np.inf).max(0)
    cols = np.argsort(-strength, kind="stable")[:n_targets]
    cols = cols[np.isfinite(strength[cols])]
    block = block[:, cols]
    if cluster:
        r, c = _leaf_order(block), _leaf_order(block.T)
        block, rows, cols = block[r][:, c], [rows[i] for i in r], cols[c]
    signed = np.nanmin(block) < 0 if np.isfinite(block).any() else False
    if cmap is None:
        cmap = "RdBu_r" if signed else "viridis"
    lim = np.nanmax(np.abs(block)) if np.isfinite(block).any() else 1.0
    if figsize is None:
        figsize = (max(4.0, 0.28 * len(cols) + 2.5), max(2.5, 0.3 * len(rows) + 1.5))
    fig, ax = plt.subplots(figsize=figsize)
    kw = {"vmin": -lim, "vmax": lim} if signed else {}
    im = ax.imshow(np.ma.masked_invalid(block), aspect="auto", cmap=cmap, interpolation="nearest", **kw)
    ax.set_xticks(range(len(cols)), names[cols], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), names[rows], fontsize=8)
    ax.set_xlabel("target gene")
    ax.set_ylabel("perturbed (source) gene")
    base = next((k for k in sorted(adata.uns, key=len, reverse=True) if key == k or key.startswith(f"{k}_")), None)
    note = adata.uns[base] if base is not None else {}
    weights = note.get("params", {}).get("weights_note") if isinstance(note, dict) else None
    title = key if weights is None else f"{key} ({weights})"
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="score")
    fig.tight_layout()
    return finish(fig, show, return_fig)


def gene_dependents(
    adata: AnnData,
    gene: str,
    *,
    key: str = "geneformer_dependency",
    maps: Sequence[str] | None = None,
    n_top: int = 15,
    absolute: bool = True,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """What depends on this gene: its strongest targets in the model's map, beside the same genes in the baselines.

    One horizontal bar panel per map (the model first, then ``maps``, default every baseline under ``key``), the
    genes ordered by the model's ``|score|``.

    Parameters
    ----------
    adata
        Data with the maps of :func:`scfmkit.tl.gene_dependency`.
    gene
        A source gene of the map.
    key
        ``key_added`` of the maps.
    maps
        Baseline labels to show beside (e.g. ``["coexpression", "random"]``); default all under ``key``.
    n_top
        Number of targets.
    absolute
        Order by ``|score|``.
    figsize, show, return_fig
        As in the other plots.

    Returns
    -------
    The figure if ``return_fig``, else ``None``.
    """
    import matplotlib.pyplot as plt

    M = _matrix(adata, key)
    names = np.asarray(adata.var_names.astype(str))
    pos = {n: i for i, n in enumerate(names)}
    if gene not in pos or not np.isfinite(M[pos[gene]]).any():
        sources = [names[i] for i in _sources(adata, key, M)]
        msg = f"{gene!r} is not a source of varp[{key!r}]; sources: {sources[:20]}."
        raise ValueError(msg)
    found = [k[len(key) + 1 :] for k in adata.varp if k.startswith(key + "_") and k != f"{key}_n_cells"]
    maps = found if maps is None else list(maps)
    bad = [m for m in maps if m not in found]
    if bad:
        msg = f"Maps {bad} not found under {key!r}; available: {found}."
        raise KeyError(msg)
    row = M[pos[gene]]
    ok = np.flatnonzero(np.isfinite(row))
    top = ok[np.argsort(-(np.abs(row[ok]) if absolute else row[ok]), kind="stable")[:n_top]][::-1]
    panels = [("model", row)] + [(m, _matrix(adata, f"{key}_{m}")[pos[gene]]) for m in maps]
    if figsize is None:
        figsize = (2.6 * len(panels), max(2.5, 0.25 * len(top) + 1.2))
    fig, axes = plt.subplots(1, len(panels), figsize=figsize, sharey=True, squeeze=False)
    for ax, (label, values) in zip(axes[0], panels, strict=True):
        v = values[top]
        ax.barh(range(len(top)), np.nan_to_num(v), color=np.where(v >= 0, "#3b75af", "#c44e52"))
        ax.axvline(0, color="k", lw=0.5)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    axes[0, 0].set_yticks(range(len(top)), names[top], fontsize=8)
    fig.suptitle(f"what depends on {gene} ({key})", fontsize=10)
    fig.tight_layout()
    return finish(fig, show, return_fig)
