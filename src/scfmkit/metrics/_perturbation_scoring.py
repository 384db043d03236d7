"""Score predicted pseudobulks with every metric of the table (:data:`PERTURBATION_METRIC_TABLE`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from scfmkit._labels import obs_strings
from scfmkit._utils import get_matrix, get_modality, logger

from ._celleval import CellSet
from ._perturbation import top_expressed_genes
from ._table import PERTURBATION_METRIC_TABLE, PERTURBATION_METRICS

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

__all__ = ["cell_set", "perturbation_metrics"]


def _dense(x) -> np.ndarray:
    if hasattr(x, "toarray"):
        x = x.toarray()
    return np.asarray(x, dtype=np.float64)


def _info(data: AnnData) -> dict:
    info = data.uns.get("perturbation")
    if info is None or "control_mean" not in data.var:
        msg = "`data` is not a perturbation pseudobulk; build it with `scfmkit.pp.pseudobulk_perturbations` first."
        raise ValueError(msg)
    return info


def cell_set(cells: AnnData | MuData, data: AnnData, *, mod: str | None = "rna") -> CellSet:
    """The cells behind a pseudobulk, normalised as the pseudobulk was, for the metrics that test cells.

    Parameters
    ----------
    cells
        Cells x genes with the pseudobulk's perturbation column (``uns['perturbation']['params']``); raw counts are
        normalised and logged exactly as :func:`scfmkit.pp.pseudobulk_perturbations` did. Not modified.
    data
        The pseudobulk (:func:`scfmkit.pp.pseudobulk_perturbations`). Genes are matched by name, in any order.
    mod
        Modality of a MuData.

    Returns
    -------
    A :class:`scfmkit.metrics.CellSet` over ``data.var_names``.
    """
    import anndata as ad
    import pandas as pd
    import scanpy as sc
    from scipy import sparse

    info = _info(data)
    params = info.get("params", {})
    key = params.get("perturbation_key", "condition")
    control = str(info.get("control", params.get("control", "control")))
    src = get_modality(cells, mod)
    if key not in src.obs:
        msg = f"`cells` lacks obs[{key!r}], the perturbation column the pseudobulk was built from."
        raise KeyError(msg)
    var = pd.Index(src.var_names.astype(str))
    pos = var.get_indexer(data.var_names.astype(str))
    if (pos < 0).any():
        missing = list(data.var_names[pos < 0][:5])
        msg = f"`cells` lacks {int((pos < 0).sum())} genes of the pseudobulk (e.g. {missing}); pass the same genes."
        raise ValueError(msg)
    layer = params.get("layer")
    layer = None if layer in (None, "None") and "None" not in src.layers else layer  # h5ad-safe params write "None"
    target_sum = params.get("target_sum")
    target_sum = 1e4 if target_sum in (None, "None") else float(target_sum)
    X = get_matrix(src, layer)
    X = X.tocsr().astype(np.float64) if sparse.issparse(X) else np.array(X, dtype=np.float64)  # a copy
    if params.get("counts"):  # normalised over all genes, as the pseudobulk was
        tmp = ad.AnnData(X, obs=pd.DataFrame(index=pd.RangeIndex(X.shape[0]).astype(str)))
        sc.pp.normalize_total(tmp, target_sum=target_sum)
        sc.pp.log1p(tmp)
        X = tmp.X
    if not np.array_equal(pos, np.arange(var.size)):
        X = X[:, pos]  # genes put in the pseudobulk's order
    labels = obs_strings(src.obs, key, what="perturbation_key")  # NaN labels: a clear error (pandas 3 safe)
    out = CellSet(X, labels, control)
    ctrl = data.var["control_mean"].to_numpy(dtype=np.float64)
    got = out.mean(control)
    if not np.allclose(got, ctrl, rtol=1e-6, atol=1e-8):
        msg = (
            "The control cells' mean differs from the pseudobulk's `var['control_mean']`: `cells` are not the cells "
            "the pseudobulk was built from (or were normalised differently)."
        )
        raise ValueError(msg)
    return out


def _prediction_matrix(data, predictions, conditions):
    import pandas as pd

    var_names = data.var_names
    if isinstance(predictions, str):
        if predictions not in data.layers:
            msg = f"Layer {predictions!r} not found; available layers: {list(data.layers)}."
            raise KeyError(msg)
        layer = np.asarray(data.layers[predictions], dtype=np.float64)
        frame = pd.DataFrame(layer, index=data.obs_names, columns=var_names)
        if conditions is None:
            conditions = list(frame.index[~np.isnan(layer).any(1)])
        missing = [c for c in conditions if c not in frame.index]
        if missing:
            msg = f"Conditions {missing[:5]} are not rows of `data`; only observed conditions can be scored."
            raise KeyError(msg)
        return frame.loc[list(conditions)].to_numpy(), [str(c) for c in conditions]
    if isinstance(predictions, pd.DataFrame):
        missing_genes = var_names.difference(predictions.columns)
        if len(missing_genes):
            msg = f"`predictions` lacks {len(missing_genes)} genes of `data` (e.g. {list(missing_genes[:5])})."
            raise ValueError(msg)
        if conditions is None:
            conditions = list(predictions.index)
        absent = [c for c in conditions if c not in predictions.index]
        if absent:
            msg = f"`predictions` has no row for {absent[:5]}."
            raise KeyError(msg)
        # columns are matched by name, in any order
        return predictions.loc[list(conditions), list(var_names)].to_numpy(dtype=np.float64), [
            str(c) for c in conditions
        ]
    if conditions is None:
        msg = "Pass `conditions=` (the row names) together with an array of predictions."
        raise ValueError(msg)
    pred = np.array(predictions, dtype=np.float64)  # a copy
    if pred.shape != (len(conditions), data.n_vars):
        msg = (
            f"`predictions` must be {len(conditions)} x {data.n_vars} (conditions x genes in `data.var_names` "
            f"order), got {pred.shape}."
        )
        raise ValueError(msg)
    return pred, [str(c) for c in conditions]


def perturbation_metrics(
    data: AnnData,
    predictions: pd.DataFrame | np.ndarray | str,
    *,
    conditions: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    de_genes: Mapping[str, Sequence[str]] | None = None,
    train: Sequence[str] | None = None,
    n_top_expressed: int = 1000,
    cells: AnnData | CellSet | None = None,
    pred_cells: CellSet | None = None,
    clip_negative: bool = False,
) -> pd.DataFrame:
    """Score predicted pseudobulks against observed ones: one row per condition and metric.

    Every metric is an entry of :data:`scfmkit.metrics.PERTURBATION_METRIC_TABLE` (:func:`scfmkit.metrics.
    metric_table` lists kernel, gene set, level and source). Metrics whose entry ``needs_cells`` (cell-eval's DE
    overlap) run cell-eval's DE test: the observed cells of each condition against the control cells, and the
    predicted profile repeated for as many cells against the same control cells (as cell-eval scores its cell-mean
    baseline); they are computed only when ``cells`` is given.

    Parameters
    ----------
    data
        Pseudobulk AnnData from :func:`scfmkit.pp.pseudobulk_perturbations` (conditions x genes; observed means in
        ``X``, control mean in ``var['control_mean']``, top DE genes in ``uns['perturbation']['top_de_genes']``).
    predictions
        Predicted expression (log-normalised, like ``data.X``): a DataFrame (conditions x genes, index = condition
        names; columns matched to ``data.var_names`` by name, in any order), an array in the order of ``conditions``
        with genes in ``data.var_names`` order, or the name of a layer of ``data`` (as written by
        :func:`scfmkit.tl.predict_perturbation`). NaN in a scored condition is an error. Not modified.
    conditions
        Conditions to score (default: the DataFrame's index, or all rows of the layer without NaN). Each must be a
        row of ``data`` (and have cells in ``cells``).
    metrics
        Names from the table (default: all, less those that need cells when ``cells`` is None).
    de_genes
        Top DE genes per condition (default: ``data.uns['perturbation']['top_de_genes']``).
    train
        Training conditions. Systema's reference for ``pearson_delta_pert`` is the mean of their non-control
        pseudobulks (the average of the training perturbation centroids). Default: ``obs['split'] == 'train'`` when
        that column exists, else every non-control row that is not scored (all non-control rows if none is left).
    n_top_expressed
        Genes used by ``pearson_delta_top1000`` and ``l2_top1000`` (the most expressed in control).
    cells
        The cells behind ``data`` (an AnnData, normalised here as ``data`` was, or a :class:`scfmkit.metrics.CellSet`
        from :func:`scfmkit.metrics.cell_set`, which keeps the observed DE rankings between calls).
    pred_cells
        Predicted *cells* with their own control cells (e.g. one half of a split-half replicate). When given, the
        cell metrics test these cells against their own controls, and ``discrimination_score_l1`` measures the
        predicted effects from their control mean (cell-eval's convention); otherwise both use the observed control.
    clip_negative
        cell-eval's DE test reads log1p values, which cannot be negative: a negative predicted value raises
        (default) or, with ``clip_negative=True``, is set to 0 for the cell metrics only (logged).

    Returns
    -------
    A tidy DataFrame with columns ``condition``, ``metric``, ``value`` (a new object; ``data`` is not modified).
    ``centroid_accuracy`` compares each prediction with the observed centroids of all non-control rows of ``data``
    (scored and training conditions alike, as Systema does); ``discrimination_score_l1`` ranks among the scored
    conditions (cell-eval's panel). A DE overlap of a condition without observed DE genes is 0, as cell-eval returns
    it; ``attrs['n_true_de']`` holds the number of observed DE genes per condition.
    """
    import pandas as pd

    info = _info(data)
    if metrics is None:
        metrics = [m for m in PERTURBATION_METRICS if cells is not None or not PERTURBATION_METRIC_TABLE[m].needs_cells]
    metrics = list(metrics)
    unknown = sorted(set(metrics) - set(PERTURBATION_METRICS))
    if unknown:
        msg = f"Unknown metrics {unknown}; choose from {list(PERTURBATION_METRICS)}."
        raise ValueError(msg)
    specs = [PERTURBATION_METRIC_TABLE[m] for m in metrics]
    need_cells = [s.name for s in specs if s.needs_cells]
    if need_cells and cells is None:
        msg = f"Metrics {need_cells} test cells: pass `cells=` (the cells `data` was built from)."
        raise ValueError(msg)
    if cells is not None and not isinstance(cells, CellSet):
        cells = cell_set(cells, data)

    pred_mat, conditions = _prediction_matrix(data, predictions, conditions)
    missing = [c for c in conditions if c not in data.obs_names]
    if missing:
        msg = f"Conditions {missing[:5]} are not rows of `data`; only observed conditions can be scored."
        raise KeyError(msg)
    bad = [c for c, row in zip(conditions, pred_mat, strict=True) if not np.isfinite(row).all()]
    if bad:
        msg = (
            f"Predictions of {len(bad)} condition(s) contain NaN or infinite values (e.g. {bad[:5]}); drop those "
            "conditions (`conditions=`) or fix the predictor."
        )
        raise ValueError(msg)
    true_mat = _dense(data[conditions].X)
    ctrl = data.var["control_mean"].to_numpy(dtype=np.float64)
    is_ctrl = data.obs["is_control"].to_numpy(bool)
    names = data.obs_names.astype(str)
    if train is None:
        if "split" in data.obs:
            train = list(names[data.obs["split"].astype(str).to_numpy() == "train"])
        else:
            train = [n for n in names if n not in set(conditions)]
    ref_rows = np.isin(names, [str(t) for t in train]) & ~is_ctrl
    if not ref_rows.any():  # nothing held apart: the centroid of all perturbations
        ref_rows = ~is_ctrl
    pert_centroid = _dense(data[ref_rows].X).mean(0)
    other_rows = ~is_ctrl & ~np.isin(names, conditions)
    others = _dense(data[other_rows].X) if other_rows.any() else None
    gene_pos = pd.Index(data.var_names)
    pred_ctrl = pred_cells.mean(pred_cells.control) if pred_cells is not None else ctrl

    gene_sets = {"top_expressed": [top_expressed_genes(ctrl, n_top_expressed)] * len(conditions)}
    if de_genes is None:
        de_genes = info.get("top_de_genes", {})
    de_idx = []
    for cond in conditions:
        de = de_genes.get(cond)
        idx = None if de is None else gene_pos.get_indexer(list(de))
        de_idx.append(None if idx is None or not (idx >= 0).any() else idx[idx >= 0])
    gene_sets["top_de"] = de_idx

    per_cond: dict[str, list] = {"pred": list(pred_mat), "true": list(true_mat)}
    per_cond["control"] = [ctrl] * len(conditions)
    per_cond["perturbed_centroid"] = [pert_centroid] * len(conditions)
    n_true_de: dict[str, int] = {}
    if need_cells:
        absent = [c for c in conditions if not cells.has(c)]
        if absent:
            msg = f"`cells` has no cells of {absent[:5]}; the DE metrics need the observed cells of every condition."
            raise KeyError(msg)
        if cells.n_genes != data.n_vars:
            msg = f"`cells` has {cells.n_genes} genes, `data` {data.n_vars}; build it with `cell_set(cells, data)`."
            raise ValueError(msg)
        per_cond["true_de"] = [cells.ranking(c) for c in conditions]
        n_true_de = {c: int(r.size) for c, r in zip(conditions, per_cond["true_de"], strict=True)}
        if pred_cells is not None:
            per_cond["pred_de"] = [pred_cells.ranking(c) for c in conditions]
        else:
            neg = pred_mat < 0
            if neg.any() and not clip_negative:
                msg = (
                    f"Predictions have {int(neg.sum())} negative values (min {pred_mat.min():.3g}); cell-eval's DE "
                    "test reads log1p expression. Clip them (`clip_negative=True` sets them to 0 for the DE metrics "
                    "only) or fix the predictor."
                )
                raise ValueError(msg)
            if neg.any():
                logger.info("DE metrics: %d negative predicted values set to 0", int(neg.sum()))
            per_cond["pred_de"] = [
                cells.profile_ranking(np.clip(p, 0, None), cells.n_cells(c))
                for p, c in zip(pred_mat, conditions, strict=True)
            ]
    panel = {"pred": pred_mat, "true": true_mat, "pred_control": pred_ctrl, "true_control": ctrl, "others": others}
    panel["exclude"] = [[gene_pos.get_loc(c)] if c in gene_pos else None for c in conditions]

    values: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.level == "panel":
            args = [panel[a] for a in spec.inputs]
            kw = {k: panel[k] for k in spec.context}
            values[spec.name] = np.asarray(spec.kernel(*args, **kw, **spec.kwargs), dtype=np.float64)
            continue
        out = np.full(len(conditions), np.nan)
        subsets = gene_sets.get(spec.genes)
        for i in range(len(conditions)):
            kw = dict(spec.kwargs)
            if subsets is not None:
                if subsets[i] is None:
                    continue  # no DE genes known for this condition: NaN
                kw["genes"] = subsets[i]
            out[i] = spec.kernel(*(per_cond[a][i] for a in spec.inputs), **kw)
        values[spec.name] = out
    rows = [
        {"condition": cond, "metric": spec.name, "value": float(values[spec.name][i])}
        for i, cond in enumerate(conditions)
        for spec in specs
    ]
    df = pd.DataFrame(rows, columns=["condition", "metric", "value"])
    df.attrs["n_true_de"] = n_true_de
    return df
