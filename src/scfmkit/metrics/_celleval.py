"""cell-eval's Virtual Cell Challenge metrics as array kernels (no AnnData).

Exact re-implementations of ArcInstitute/cell-eval 0.8.1 (``src/cell_eval/metrics/``, commit ``cb70876``) and of the
differential-expression test it calls (``pdex`` 0.3.0 ``mode="ref"`` with cell-eval's settings: ``is_log1p=True``,
geometric-mean pseudobulks, ``epsilon=0``; Mann-Whitney U from ``numba-mwu`` 0.2.0: two-sided, asymptotic, tie- and
continuity-corrected; Benjamini-Hochberg FDR over the genes of each condition), and of the 2026 score of
ArcInstitute/cell-eval2 0.16.0 (``(u - b) / (r - b)`` with a split-half replicate ``r``). Goldens made by running those
packages on real Norman 2019 cells are in ``tests/data/golden/celleval_norman.npz`` (see the README there).

- :func:`de_test`: one condition's cells against the control cells (``pdex`` ``mode="ref"``).
- :func:`de_ranking`: the genes cell-eval calls DE (``fdr < 0.05``), most changed (``|log2 FC|``) first.
- :func:`de_overlap`: ``overlap_at_N`` / ``overlap_at_50`` / ``precision_at_N`` of one condition.
- :func:`discrimination_score`: ``discrimination_score_l1`` of every condition of a panel.
- :func:`mean_absolute_error`: ``mae`` (on the pseudobulks, not on the change to control).
- :func:`cell_mean_baseline`: cell-eval's baseline prediction (the mean of the condition means, control included).
- :func:`celleval_score` and :func:`replicate_score`: the normalised scores of cell-eval (2025) and cell-eval2 (2026).
- :func:`split_halves`: cell-eval2's disjoint split of every group's cells into two halves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scfmkit._random import RNGLike, as_generator

__all__ = [
    "CellSet",
    "cell_mean_baseline",
    "celleval_score",
    "de_overlap",
    "de_ranking",
    "de_test",
    "discrimination_score",
    "mean_absolute_error",
    "replicate_score",
    "split_halves",
]

FDR_THRESHOLD = 0.05


def _cells(x, name: str) -> np.ndarray:
    if hasattr(x, "toarray"):
        x = x.toarray()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        msg = f"`{name}` must be a 2-D cells x genes matrix, got shape {arr.shape}."
        raise ValueError(msg)
    if arr.shape[0] == 0:
        msg = f"`{name}` has no cells; every condition and the control need at least one cell for the DE test."
        raise ValueError(msg)
    if not np.isfinite(arr).all():
        msg = f"`{name}` contains NaN or infinite values; drop or impute them before the DE test."
        raise ValueError(msg)
    if (arr < 0).any():
        msg = (
            f"`{name}` has negative values ({int((arr < 0).sum())} entries, min {arr.min():.3g}). cell-eval's DE test "
            "reads log1p-normalised expression, which cannot be negative (cell-eval rejects such input); clip the "
            "prediction at 0 (`np.clip(x, 0, None)`) if the negatives are a predictor's rounding."
        )
        raise ValueError(msg)
    return arr


def _mwu(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided asymptotic Mann-Whitney U of every column of ``x`` against ``y`` (numba-mwu's kernel)."""
    from scipy.special import erfc
    from scipy.stats import rankdata

    n1, n2 = x.shape[0], y.shape[0]
    n = n1 + n2
    z = np.vstack([x, y])
    ranks = rankdata(z, axis=0, method="average")
    r1 = ranks[:n1].sum(0)
    # tie term sum(t^3 - t) over the groups of equal values of each column
    s = np.sort(z, axis=0)
    start = np.ones(s.shape, dtype=bool)
    start[1:] = s[1:] != s[:-1]
    flat = start.T.ravel()  # column by column
    run_id = np.cumsum(flat) - 1
    t = np.bincount(run_id).astype(np.float64)
    run_col = np.flatnonzero(flat) // n
    tie = np.bincount(run_col, weights=t * t * t - t, minlength=z.shape[1])
    u1 = r1 - n1 * (n1 + 1.0) / 2.0
    u2 = n1 * n2 - u1
    u = np.maximum(u1, u2)
    mu = n1 * n2 / 2.0
    s_sq = n1 * n2 / 12.0 * ((n + 1.0) - tie / (n * (n - 1.0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        zz = (u - mu - 0.5) / np.sqrt(s_sq)
        p = erfc(zz / np.sqrt(2.0))  # 2 * Phi(-z)
    p = np.where(s_sq <= 0.0, 1.0, np.clip(p, 0.0, 1.0))
    return u1, p


def de_test(cells, control_cells, *, epsilon: float = 0.0) -> dict[str, np.ndarray]:
    """cell-eval's differential-expression test of one condition against control (``pdex`` ``mode="ref"``).

    Parameters
    ----------
    cells, control_cells
        Log1p-normalised expression of the condition's cells and of the control cells (cells x genes, dense or sparse,
        genes in the same order). Not modified.
    epsilon
        Pseudocount added to both geometric means before the fold change (cell-eval pins 0).

    Returns
    -------
    ``log2_fold_change`` (``log2((expm1(mean(x)) + eps) / (expm1(mean(ctrl)) + eps))``; 0 where both means are 0,
    ``±inf`` for a one-sided zero), ``p_value`` (two-sided Mann-Whitney U, asymptotic, tie- and continuity-corrected;
    1 for a gene constant over both groups), ``fdr`` (Benjamini-Hochberg over the genes), ``statistic`` (U of the
    condition), ``target_mean`` and ``ref_mean`` (the geometric means in count space), all float64 per gene.
    """
    from scipy.stats import false_discovery_control

    x = _cells(cells, "cells")
    y = _cells(control_cells, "control_cells")
    if x.shape[1] != y.shape[1]:
        msg = f"`cells` has {x.shape[1]} genes but `control_cells` has {y.shape[1]}; pass the same genes in one order."
        raise ValueError(msg)
    if epsilon < 0:
        msg = f"`epsilon` must be non-negative, got {epsilon}."
        raise ValueError(msg)
    target_mean = np.expm1(x.mean(0))
    ref_mean = np.expm1(y.mean(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        lfc = np.log2((target_mean + epsilon) / (ref_mean + epsilon))
    lfc[np.isnan(lfc)] = 0.0
    stat, p = _mwu(x, y)
    fdr = false_discovery_control(p) if p.size else np.empty(0)
    return {
        "log2_fold_change": lfc,
        "p_value": p,
        "fdr": fdr,
        "statistic": stat,
        "target_mean": target_mean,
        "ref_mean": ref_mean,
    }


def de_ranking(log2_fold_change, fdr, *, fdr_threshold: float = FDR_THRESHOLD) -> np.ndarray:
    """Indices of the genes cell-eval calls DE for one condition, the largest ``|log2 FC|`` first.

    As cell-eval's ``DEResults.get_top_genes``: fold changes and FDRs are cast to float32 first, genes with
    ``fdr < fdr_threshold`` are kept and ranked by ``|log2 FC|`` (descending; ties keep gene order).

    Parameters
    ----------
    log2_fold_change, fdr
        Per-gene results of :func:`de_test`.
    fdr_threshold
        Significance threshold (cell-eval: 0.05).

    Returns
    -------
    Integer gene indices, possibly empty.
    """
    lfc = np.abs(np.asarray(log2_fold_change, dtype=np.float64)).astype(np.float32)
    q = np.asarray(fdr, dtype=np.float64).astype(np.float32)
    if lfc.shape != q.shape or lfc.ndim != 1:
        msg = f"`log2_fold_change` and `fdr` must be 1-D of one length, got {lfc.shape} and {q.shape}."
        raise ValueError(msg)
    sig = np.flatnonzero(q < fdr_threshold)
    return sig[np.argsort(-lfc[sig], kind="stable")]


def de_overlap(true_ranking, pred_ranking, *, k: int | None = None, metric: str = "overlap") -> float:
    """cell-eval's DE overlap of one condition (``overlap_at_N``, ``overlap_at_50``, ``precision_at_N`` ...).

    With ``k_eff = min(k or n, n)`` (``n`` = the number of true DE genes for ``"overlap"``, of predicted DE genes for
    ``"precision"``) it is ``|true[:k_eff] ∩ pred[:k_eff]| / k_eff``, and 0 when ``k_eff`` is 0, as cell-eval returns
    (a condition without DE genes cannot be scored; :func:`scfmkit.metrics.perturbation_metrics` reports how many
    conditions had none).

    Parameters
    ----------
    true_ranking, pred_ranking
        Gene indices from :func:`de_ranking` of the observed and of the predicted cells.
    k
        Top genes compared (``None``: all true DE genes, cell-eval's ``_at_N``).
    metric
        ``"overlap"`` (recall of the true top genes) or ``"precision"``.

    Returns
    -------
    A fraction in [0, 1].
    """
    true_ranking = np.asarray(true_ranking)
    pred_ranking = np.asarray(pred_ranking)
    if metric == "overlap":
        n = true_ranking.size
    elif metric == "precision":
        n = pred_ranking.size
    else:
        msg = f"`metric` must be 'overlap' or 'precision', got {metric!r}."
        raise ValueError(msg)
    k_eff = min(k or n, n)
    if k_eff == 0:
        return 0.0
    return np.intersect1d(true_ranking[:k_eff], pred_ranking[:k_eff]).size / k_eff


def discrimination_score(pred, true, *, pred_control, true_control, exclude: Sequence | None = None) -> np.ndarray:
    """cell-eval's ``discrimination_score_l1`` of every condition of a panel.

    For condition ``p`` the L1 distances of its predicted effect ``pred[p] - pred_control`` to every observed effect
    ``true[q] - true_control`` are sorted (``numpy.argsort``); with ``rank`` the position of ``q = p`` the score is
    ``1 - rank / n`` (1: the own effect is the nearest; the last place scores ``1/n``).

    Parameters
    ----------
    pred, true
        Predicted and observed pseudobulks, conditions x genes, rows in one order (the panel: every scored condition).
    pred_control, true_control
        Control pseudobulks the effects are taken from (the prediction's own control, as cell-eval does; for a
        predictor without control cells pass the observed control).
    exclude
        Per condition, gene indices left out of its distances (cell-eval: the column whose gene is the condition's
        name), or ``None``.

    Returns
    -------
    One score per condition.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.ndim != 2 or pred.shape != true.shape:
        msg = f"`pred` and `true` must be 2-D arrays of one shape, got {pred.shape} and {true.shape}."
        raise ValueError(msg)
    for name, arr in (("pred", pred), ("true", true)):
        if not np.isfinite(arr).all():
            msg = f"`{name}` contains NaN or infinite values; every condition of the panel needs a finite profile."
            raise ValueError(msg)
    pe = pred - np.asarray(pred_control, dtype=np.float64)
    te = true - np.asarray(true_control, dtype=np.float64)
    n, g = pred.shape
    out = np.empty(n)
    for i in range(n):
        keep = np.ones(g, dtype=bool)
        if exclude is not None and exclude[i] is not None:
            keep[np.asarray(exclude[i], dtype=np.intp)] = False
        dist = np.abs(te[:, keep] - pe[i, keep]).sum(1)
        rank = int(np.flatnonzero(np.argsort(dist) == i)[0])
        out[i] = 1.0 - rank / n
    return out


def mean_absolute_error(pred, true) -> float:
    """cell-eval's ``mae``: ``mean(|pred - true|)`` over the genes of one condition's pseudobulks.

    Parameters
    ----------
    pred, true
        Predicted and observed pseudobulk of one condition (1-D).

    Returns
    -------
    The mean absolute error.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 1:
        msg = f"`pred` and `true` must be 1-D of one length, got {pred.shape} and {true.shape}."
        raise ValueError(msg)
    return float(np.mean(np.abs(pred - true)))


def cell_mean_baseline(means) -> np.ndarray:
    """cell-eval's baseline prediction: the mean of the condition means, the control's included.

    ``cell_eval._baseline.build_base_mean_adata(as_delta=False)`` averages the per-condition mean profiles of every
    group of the data (control too) and predicts that one profile for every condition.

    Parameters
    ----------
    means
        Pseudobulks of every condition of the data and of the control (groups x genes).

    Returns
    -------
    One profile (genes).
    """
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2:
        msg = f"`means` must be groups x genes, got shape {means.shape}."
        raise ValueError(msg)
    return means.mean(0)


def celleval_score(user: float, base: float, *, higher_is_better: bool) -> float:
    """cell-eval's normalised score of one metric against the cell-mean baseline (the 2025 challenge).

    ``1 - user / base`` for an error (best 0), ``(user - base) / (1 - base)`` for a score (best 1); NaN becomes 0 and
    the result is clipped below at 0 (``cell_eval._score.score_agg_metrics``). The challenge's overall score is the
    mean of these over ``mae``, ``discrimination_score_l1`` and ``overlap_at_N``.

    Parameters
    ----------
    user, base
        Means over conditions of the metric for the method and for the baseline.
    higher_is_better
        Whether 1 (True) or 0 (False) is the best value.

    Returns
    -------
    The score (0 = the baseline or worse, 1 = perfect).
    """
    u, b = float(user), float(base)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (np.float64(u) - b) / (1 - np.float64(b)) if higher_is_better else 1.0 - (np.float64(u) / b)
    s = float(s)
    if np.isnan(s):
        return 0.0
    return max(s, 0.0)


def replicate_score(user: float, base: float, replicate: float, *, higher_is_better: bool) -> float:
    """cell-eval2's 2026 score: ``(u - b) / (r - b)``, 0 = the baseline, 1 = a repeat of the experiment.

    ``r`` is the metric of a split-half replicate of the data (half of the cells scored as the prediction of the other
    half). Not clipped (values above 1 and below 0 both occur); NaN where ``r == b`` (the metric has no span on the
    data). The evaluation order follows ``cell_eval2.scoring._raw_score`` (``1 - (u - r) / (b - r)`` for an error).

    Parameters
    ----------
    user, base, replicate
        Means over conditions of the metric for the method, the baseline and the replicate.
    higher_is_better
        Direction of the metric.

    Returns
    -------
    The score.
    """
    u, b, r = float(user), float(base), float(replicate)
    if not np.isfinite(b - r) or b == r:
        return float("nan")
    if higher_is_better:
        return (u - b) / (r - b)
    return 1.0 - (u - r) / (b - r)


def split_halves(labels, *, rng: RNGLike = 0) -> tuple[np.ndarray, np.ndarray]:
    """cell-eval2's disjoint split: each group's cells shuffled and cut into two halves of ``floor(n / 2)``.

    Groups are visited in sorted order and each is permuted with one generator (``cell_eval2.ceiling.
    _disjoint_halves``); the leftover cell of an odd group is dropped, a group of one cell is dropped from both halves.

    Parameters
    ----------
    labels
        Group label of every cell (condition, control included).
    rng
        Seed, :class:`numpy.random.Generator` or ``None`` (fresh OS entropy); cell-eval2 derives its seeds with
        ``numpy.random.SeedSequence(0).generate_state(n_splits)``.

    Returns
    -------
    Cell indices of half A and of half B (group by group).
    """
    labels = np.asarray(labels).astype(str)
    gen = as_generator(rng)
    a, b = [], []
    for g in np.unique(labels):
        perm = gen.permutation(np.flatnonzero(labels == g))
        h = perm.size // 2
        if h < 1:
            continue
        a.append(perm[:h])
        b.append(perm[h : 2 * h])
    if not a:
        msg = "No group has 2 cells or more; a split-half replicate needs at least two cells per group."
        raise ValueError(msg)
    return np.concatenate(a), np.concatenate(b)


class CellSet:
    """Log-normalised cells grouped by condition, for the metrics that run cell-eval's DE test.

    Keeps each condition's DE ranking against the control cells once computed (a benchmark scores many predictions
    of the same conditions).

    Parameters
    ----------
    X
        Log1p-normalised expression, cells x genes (dense or sparse; not copied, not modified).
    labels
        Condition of every cell (the control included).
    control
        The control label.
    """

    def __init__(self, X, labels, control: str) -> None:
        labels = np.asarray(labels).astype(str)
        if X.shape[0] != labels.size:
            msg = f"`labels` has {labels.size} entries for {X.shape[0]} cells."
            raise ValueError(msg)
        data = X.data if hasattr(X, "toarray") else np.asarray(X)
        if not np.isfinite(data).all() or (data < 0).any():
            msg = "The cells must be finite, non-negative log1p-normalised values (cell-eval's DE test reads log1p)."
            raise ValueError(msg)
        self.X = X
        self.labels = labels
        self.control = str(control)
        self._rows = {str(g): np.flatnonzero(labels == g) for g in np.unique(labels)}
        if self.control not in self._rows:
            msg = f"No control cells (label {self.control!r}) among the cells."
            raise ValueError(msg)
        self._ranking: dict[str, np.ndarray] = {}
        self._ctrl: np.ndarray | None = None

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return int(self.X.shape[1])

    def has(self, condition: str) -> bool:
        """Whether the condition has cells here."""
        return str(condition) in self._rows

    def n_cells(self, condition: str) -> int:
        """Number of cells of a condition."""
        return int(self._rows[str(condition)].size)

    def cells(self, condition: str) -> np.ndarray:
        """Dense float64 matrix of a condition's cells."""
        x = self.X[self._rows[str(condition)]]
        return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)

    def control_cells(self) -> np.ndarray:
        """Dense float64 matrix of the control cells."""
        if self._ctrl is None:
            self._ctrl = self.cells(self.control)
        return self._ctrl

    def mean(self, condition: str) -> np.ndarray:
        """Pseudobulk (mean) of a condition's cells."""
        return self.cells(condition).mean(0)

    def ranking(self, condition: str) -> np.ndarray:
        """cell-eval's DE ranking of the condition's cells against the control cells (cached)."""
        condition = str(condition)
        if condition not in self._ranking:
            res = de_test(self.cells(condition), self.control_cells())
            self._ranking[condition] = de_ranking(res["log2_fold_change"], res["fdr"])
        return self._ranking[condition]

    def profile_ranking(self, profile, n_cells: int) -> np.ndarray:
        """cell-eval's DE ranking of one predicted profile repeated for ``n_cells`` cells, against these controls.

        This is how cell-eval scores a pseudobulk prediction (its cell-mean baseline is such a repeated profile).
        """
        profile = np.asarray(profile, dtype=np.float64)
        res = de_test(np.broadcast_to(profile, (int(n_cells), profile.size)), self.control_cells())
        return de_ranking(res["log2_fold_change"], res["fdr"])

    def subset(self, idx) -> CellSet:
        """A new CellSet of the cells ``idx`` (e.g. one half of a split)."""
        idx = np.asarray(idx)
        return CellSet(self.X[idx], self.labels[idx], self.control)
