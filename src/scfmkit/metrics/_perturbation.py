"""Perturbation-prediction metrics (GEARS, Ahlmann-Eltze, Systema, cz-benchmarks): pure numpy kernels.

Every kernel scores one condition (1-D arrays over genes) except :func:`centroid_accuracy`, which needs all evaluated
conditions at once. The scoring loop (:func:`scfmkit.metrics.perturbation_metrics`) reads them from the metric table
(``_table.py``); cell-eval's metrics are in ``_celleval.py``. The metrics follow the published benchmarks:

- Ahlmann-Eltze, Huber & Anders (Nat Methods 2025): Pearson delta and L2 distance on the 1,000 genes most expressed in
  control cells (``pearson_delta_top1000``, ``l2_top1000``).
- GEARS (Roohani et al. 2024): Pearson, Pearson delta and MSE on all genes and on the top-20 DE genes of the condition
  (``pearson``, ``pearson_delta``, ``mse``, ``pearson_de``, ``pearson_delta_de``, ``mse_de``) and the fraction of DE
  genes whose predicted change has the right sign (``direction_de``).
- Systema (Vinas Torne et al. 2025): centroid accuracy and Pearson delta measured against the average of the
  training perturbation centroids instead of control (``centroid_accuracy``, ``pearson_delta_pert``).
- cz-benchmarks: Spearman correlation of predicted and observed log fold changes (``spearman_lfc``,
  ``spearman_lfc_de``); on log-normalised pseudobulks the log fold change is the difference to control.

Correlations with a constant input (e.g. the ``control`` predictor's zero delta) are undefined and returned as NaN,
not 0 as GEARS does.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "centroid_accuracy",
    "direction_agreement",
    "l2_distance",
    "mse",
    "pearson",
    "pearson_delta",
    "spearman_delta",
    "top_expressed_genes",
]


def _vec(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        msg = f"`{name}` must be 1-D (one value per gene), got shape {arr.shape}."
        raise ValueError(msg)
    return arr


def _subset(genes, *arrays: np.ndarray) -> list[np.ndarray]:
    if genes is None:
        return list(arrays)
    idx = np.asarray(genes)
    return [a[idx] for a in arrays]


def _check_same(*arrays: np.ndarray) -> None:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        msg = f"All inputs must have the same shape, got {sorted(shapes)}."
        raise ValueError(msg)


def _corr(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> float:
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    # constant up to rounding (e.g. a prediction that equals the reference): the correlation is undefined
    tol = 1e-10 * max(1.0, scale)
    if np.abs(a).max() <= tol or np.abs(b).max() <= tol:
        return float("nan")
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if denom == 0 or not np.isfinite(denom):
        return float("nan")
    return float(np.clip((a * b).sum() / denom, -1.0, 1.0))


def _scale(*arrays: np.ndarray) -> float:
    return float(max((np.abs(a).max() if a.size else 0.0) for a in arrays))


def _rank(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a, method="average")


def pearson(pred, true, *, genes=None) -> float:
    """Pearson correlation of predicted and observed expression (GEARS ``pearson``).

    Parameters
    ----------
    pred, true
        Predicted and observed expression of one condition (1-D, one value per gene).
    genes
        Optional integer indices or boolean mask of the genes to use (e.g. the top-20 DE genes).

    Returns
    -------
    The correlation, NaN when either side is constant or fewer than 2 genes are used.
    """
    pred, true = _vec(pred, "pred"), _vec(true, "true")
    _check_same(pred, true)
    pred, true = _subset(genes, pred, true)
    return _corr(pred, true)


def pearson_delta(pred, true, reference, *, genes=None) -> float:
    """Pearson correlation of the changes ``pred - reference`` and ``true - reference``.

    With ``reference`` the control mean this is GEARS' and Ahlmann-Eltze's Pearson delta; with the mean of the
    perturbed conditions it is Systema's perturbation-specific Pearson delta.

    Parameters
    ----------
    pred, true
        Predicted and observed expression of one condition.
    reference
        Expression the changes are measured from (control mean, or the perturbed centroid).
    genes
        Optional indices or mask of the genes to use.

    Returns
    -------
    The correlation (NaN for a constant change, e.g. the ``control`` predictor).
    """
    pred, true, reference = _vec(pred, "pred"), _vec(true, "true"), _vec(reference, "reference")
    _check_same(pred, true, reference)
    pred, true, reference = _subset(genes, pred, true, reference)
    return _corr(pred - reference, true - reference, _scale(pred, true, reference))


def mse(pred, true, *, genes=None) -> float:
    """Mean squared error between predicted and observed expression (GEARS ``mse``).

    Parameters
    ----------
    pred, true
        Predicted and observed expression of one condition.
    genes
        Optional indices or mask of the genes to use.

    Returns
    -------
    ``mean((pred - true) ** 2)``.
    """
    pred, true = _vec(pred, "pred"), _vec(true, "true")
    _check_same(pred, true)
    pred, true = _subset(genes, pred, true)
    if pred.size == 0:
        return float("nan")
    return float(np.mean((pred - true) ** 2))


def l2_distance(pred, true, *, genes=None) -> float:
    """Euclidean (L2) distance between predicted and observed expression (Ahlmann-Eltze et al.).

    Parameters
    ----------
    pred, true
        Predicted and observed expression of one condition.
    genes
        Optional indices or mask of the genes to use (the paper uses the 1,000 most expressed control genes).

    Returns
    -------
    ``sqrt(sum((pred - true) ** 2))``.
    """
    pred, true = _vec(pred, "pred"), _vec(true, "true")
    _check_same(pred, true)
    pred, true = _subset(genes, pred, true)
    return float(np.sqrt(np.sum((pred - true) ** 2)))


def direction_agreement(pred, true, reference, *, genes=None) -> float:
    """Fraction of genes whose predicted change has the observed sign (GEARS' fraction of correct direction).

    Parameters
    ----------
    pred, true
        Predicted and observed expression of one condition.
    reference
        Control expression the changes are measured from.
    genes
        Optional indices or mask of the genes to use (normally the condition's top-20 DE genes).

    Returns
    -------
    ``mean(sign(pred - reference) == sign(true - reference))``; a predicted change of exactly 0 counts as right only
    where the observed change is exactly 0.
    """
    pred, true, reference = _vec(pred, "pred"), _vec(true, "true"), _vec(reference, "reference")
    _check_same(pred, true, reference)
    pred, true, reference = _subset(genes, pred, true, reference)
    if pred.size == 0:
        return float("nan")
    return float(np.mean(np.sign(pred - reference) == np.sign(true - reference)))


def spearman_delta(pred, true, reference, *, genes=None) -> float:
    """Spearman correlation of predicted and observed log fold changes (cz-benchmarks).

    On log-normalised values the log fold change to control is ``x - reference``.

    Parameters
    ----------
    pred, true
        Predicted and observed (log-normalised) expression of one condition.
    reference
        Control expression.
    genes
        Optional indices or mask of the genes to use.

    Returns
    -------
    The rank correlation (ties get average ranks), NaN when either side is constant.
    """
    pred, true, reference = _vec(pred, "pred"), _vec(true, "true"), _vec(reference, "reference")
    _check_same(pred, true, reference)
    pred, true, reference = _subset(genes, pred, true, reference)
    if pred.size < 2:
        return float("nan")
    d_pred, d_true = pred - reference, true - reference
    scale = _scale(pred, true, reference)
    tol = 1e-10 * max(1.0, scale)
    if np.ptp(d_pred) <= tol or np.ptp(d_true) <= tol:
        return float("nan")
    return _corr(_rank(d_pred), _rank(d_true))


def centroid_accuracy(pred, true, *, others=None) -> np.ndarray:
    """Systema's centroid accuracy of each condition.

    For condition ``i`` it is the fraction of the *other* observed centroids (the rows ``true[j]``, ``j != i``, plus
    the rows of ``others``) that are farther (Euclidean) from the prediction ``pred[i]`` than its own observed
    centroid ``true[i]``: 1 means the prediction is closer to the right perturbation than to every other one, ~0.5
    is chance. Systema compares against all observed perturbations, training ones included (pass them as
    ``others``).

    Parameters
    ----------
    pred, true
        Predicted and observed centroids, conditions x genes, rows in the same order.
    others
        Observed centroids of further perturbations (m x genes), used only as competitors.

    Returns
    -------
    One value per condition (NaN for all when there is no competitor).
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.ndim != 2 or pred.shape != true.shape:
        msg = f"`pred` and `true` must be 2-D arrays of the same shape, got {pred.shape} and {true.shape}."
        raise ValueError(msg)
    cand = true
    if others is not None:
        others = np.asarray(others, dtype=np.float64).reshape(-1, true.shape[1])
        cand = np.vstack([true, others])
    n = pred.shape[0]
    n_comp = cand.shape[0] - 1
    if n_comp < 1:
        return np.full(n, np.nan)
    sq = (pred * pred).sum(1)[:, None] + (cand * cand).sum(1)[None, :] - 2 * pred @ cand.T
    dist = np.sqrt(np.maximum(sq, 0))
    own = dist[np.arange(n), np.arange(n)][:, None]
    farther = (dist > own).sum(1)  # the own centroid is never counted (not > itself)
    return farther / n_comp


def top_expressed_genes(control_mean, n: int = 1000) -> np.ndarray:
    """Indices of the ``n`` genes with the highest control expression (all genes if fewer), highest first.

    Parameters
    ----------
    control_mean
        Mean control expression per gene.
    n
        How many genes.

    Returns
    -------
    Integer indices (ties broken by gene order).
    """
    control_mean = _vec(control_mean, "control_mean")
    order = np.argsort(-control_mean, kind="stable")
    return order[: min(n, control_mean.size)]
