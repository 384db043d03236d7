"""Floor, ceiling and uncertainty of a perturbation benchmark table: intervals, paired tests, normalised scores."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from scfmkit._random import RNGLike, as_generator

from ._celleval import celleval_score, replicate_score
from ._table import PERTURBATION_METRIC_TABLE

__all__ = ["summarize_benchmark"]

#: cell-eval's VCC 2025 overall score: the mean of these normalised scores.
VCC2025_METRICS = ("mae", "discrimination_score_l1", "overlap_at_N")

_COLUMNS = [
    "method",
    "seed",
    "metric",
    "n_conditions",
    "mean",
    "ci_low",
    "ci_high",
    "baseline",
    "diff",
    "diff_ci_low",
    "diff_ci_high",
    "p_value",
    "effect_size",
    "significant",
    "discriminates",
    "celleval_score",
    "replicate_score",
    "note",
]


def _higher(metric: str) -> bool:
    spec = PERTURBATION_METRIC_TABLE.get(metric)
    return True if spec is None else spec.higher_is_better


def _wilcoxon(d: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank p-value and matched-pairs rank-biserial correlation of differences ``d``."""
    from scipy.stats import rankdata, wilcoxon

    d = d[np.isfinite(d)]
    nz = d[d != 0]
    if nz.size == 0:
        return (1.0, 0.0) if d.size else (float("nan"), float("nan"))
    r = rankdata(np.abs(nz))
    effect = float((r[nz > 0].sum() - r[nz < 0].sum()) / r.sum())
    return float(wilcoxon(nz).pvalue), effect


def _percentile(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    q = (1 - confidence) / 2
    return float(np.quantile(boot, q)), float(np.quantile(boot, 1 - q))


def summarize_benchmark(
    table: pd.DataFrame,
    *,
    baselines: Sequence[str] = ("control", "mean", "cell_mean"),
    ceiling: str = "replicate",
    n_boot: int = 2000,
    confidence: float = 0.95,
    alpha: float = 0.05,
    rng: RNGLike = 0,
) -> pd.DataFrame:
    """Intervals, paired tests against the best baseline, and normalised scores of a benchmark table.

    Per seed (each seed is its own split; seeds are never pooled as if they were conditions) and metric:

    - ``mean`` with a percentile bootstrap interval over conditions (``ci_low``, ``ci_high``). The resampled
      conditions are the same for every method (paired), so ``diff_ci_*``, the interval of the difference to the best
      baseline, is paired too.
    - ``baseline``: the best of ``baselines`` on that metric (by the table's direction); ``diff`` = mean of
      method minus baseline over their common conditions, ``p_value`` of a two-sided Wilcoxon signed-rank test over
      conditions, ``effect_size`` = the matched-pairs rank-biserial correlation, signed so that > 0 means better than
      the baseline (1: better on every condition). ``significant`` = ``p_value < alpha``.
    - ``discriminates``: whether the ``ceiling`` row (the split-half replicate) is significantly better than the best
      baseline. If it is not, no method can be shown to beat the floor with this metric on these data, and ``note``
      says so (with the median number of cell-eval DE genes per condition for the DE metrics, when the table's
      ``attrs['n_true_de']`` has them).
    - ``celleval_score``: cell-eval's normalised score against ``cell_mean`` (VCC 2025; ``1 - u/b`` or
      ``(u - b)/(1 - b)``, clipped at 0); ``replicate_score``: cell-eval2's ``(u - b) / (r - b)`` with ``b`` the
      ``mean`` row (the mean perturbation response) and ``r`` the ceiling.

    Rows with ``seed == "all"`` average the per-seed means (bootstrap: conditions resampled within each seed); their
    test pairs each condition's difference averaged over the seeds that scored it. Rows ``metric ==
    "vcc2025_score"`` hold cell-eval's overall score (mean of ``celleval_score`` over ``mae``,
    ``discrimination_score_l1`` and ``overlap_at_N``).

    Parameters
    ----------
    table
        Output of :func:`scfmkit.tl.benchmark_perturbation` (``method``, ``seed``, ``condition``, ``metric``,
        ``value``). Not modified.
    baselines
        The floors (those present are used).
    ceiling
        The method name of the replicate row.
    n_boot
        Bootstrap resamples.
    confidence
        Interval level.
    alpha
        Significance level of the tests.
    rng
        Seed or generator of the bootstrap (``None``: fresh OS entropy).

    Returns
    -------
    A new tidy DataFrame, one row per (method, seed, metric), columns as above plus ``n_conditions`` (the conditions
    with a value; for ``seed == "all"`` the scored (seed, condition) pairs).
    """
    need = {"method", "seed", "condition", "metric", "value"}
    if not need <= set(table.columns):
        msg = f"`table` needs the columns {sorted(need)} (a table from `scfmkit.tl.benchmark_perturbation`)."
        raise ValueError(msg)
    if not 0 < confidence < 1:
        msg = f"`confidence` must be in (0, 1), got {confidence}."
        raise ValueError(msg)
    gen = as_generator(rng)
    methods = list(pd.unique(table["method"]))
    floors = [b for b in baselines if b in methods]
    n_true_de = table.attrs.get("n_true_de", {}) or {}
    rows = []
    with warnings.catch_warnings():  # all-NaN columns (e.g. a correlation of the `control` row) give NaN, said once
        warnings.simplefilter("ignore", RuntimeWarning)
        for metric in pd.unique(table["metric"]):
            rows.extend(
                _summarize_metric(table, metric, methods, floors, ceiling, n_true_de, gen, n_boot, confidence, alpha)
            )
    out = pd.DataFrame(rows, columns=_COLUMNS)
    vcc = out[out["metric"].isin(VCC2025_METRICS)]
    if len(vcc) and set(VCC2025_METRICS) <= set(vcc["metric"]):
        agg = vcc.groupby(["method", "seed"], sort=False)["celleval_score"].agg(["mean", "size"]).reset_index()
        agg = agg[agg["size"] == len(VCC2025_METRICS)]
        extra = pd.DataFrame(
            {
                "method": agg["method"],
                "seed": agg["seed"],
                "metric": "vcc2025_score",
                "mean": agg["mean"],
                "celleval_score": agg["mean"],
                "note": "cell-eval's overall score: mean of celleval_score over " + ", ".join(VCC2025_METRICS),
            }
        )
        out = pd.concat([out, extra.reindex(columns=_COLUMNS)], ignore_index=True)
    out["significant"] = out["significant"].astype("boolean")
    out["discriminates"] = out["discriminates"].astype("boolean")
    out["n_conditions"] = out["n_conditions"].astype("Int64")
    return out


def _summarize_metric(table, metric, methods, floors, ceiling, n_true_de, gen, n_boot, confidence, alpha) -> list:
    rows = []
    higher = _higher(metric)
    sign = 1.0 if higher else -1.0
    sub = table[table["metric"] == metric]
    seeds = list(pd.unique(sub["seed"]))
    wide = {
        s: sub[sub["seed"] == s].pivot_table(index="condition", columns="method", values="value", dropna=False)
        for s in seeds
    }
    draws = {s: gen.integers(0, len(w), size=(n_boot, len(w))) for s, w in wide.items()}

    def boot_means(s, col, draws=draws, wide=wide):
        v = wide[s][col].to_numpy(float)[draws[s]]
        return np.nanmean(v, axis=1)

    groups = [(s, [s]) for s in seeds] + ([("all", seeds)] if len(seeds) > 1 else [])
    for label, ss in groups:
        present = [m for m in methods if all(m in wide[s].columns for s in ss)]
        means = {m: float(np.mean([np.nanmean(wide[s][m].to_numpy(float)) for s in ss])) for m in present}
        boots = {m: np.mean([boot_means(s, m) for s in ss], axis=0) for m in present}
        cand = [b for b in floors if b in present and np.isfinite(means[b])]
        best = max(cand, key=lambda b: sign * means[b]) if cand else None

        def diffs(m, best=best, ss=ss):
            if len(ss) == 1:
                w = wide[ss[0]]
                return w[m].to_numpy(float) - w[best].to_numpy(float)
            per = [wide[s][m] - wide[s][best] for s in ss]
            return pd.concat(per).groupby(level=0).mean().to_numpy(float)

        tests = {m: _wilcoxon(sign * diffs(m)) if best is not None and m != best else (np.nan, np.nan) for m in present}
        disc = None
        if ceiling in present and best is not None:
            p_c, _ = tests[ceiling]
            disc = bool(p_c < alpha and sign * (means[ceiling] - means[best]) > 0)
        note = ""
        n_pairs = int(np.isfinite(diffs(ceiling)).sum()) if disc is not None else 0
        if disc is False and 2.0 / 2.0**n_pairs >= alpha:
            note = (
                f"too few conditions to tell: {n_pairs} paired conditions cannot give a Wilcoxon p below {alpha:g} "
                f"even if the {ceiling} (ceiling) beat {best} on every one"
            )
        elif disc is False:
            note = (
                f"cannot discriminate on these data: the {ceiling} (ceiling) is not significantly better than "
                f"{best} (p = {tests[ceiling][0]:.2g})"
            )
        spec = PERTURBATION_METRIC_TABLE.get(metric)
        if disc is False and spec is not None and spec.needs_cells:
            counts = [n for s in ss for n in (n_true_de.get(s) or n_true_de.get(str(s)) or {}).values()]
            if counts:
                note += f"; median {np.median(counts):g} cell-eval DE genes per condition"
        for m in present:
            lo, hi = _percentile(boots[m], confidence)
            if best is not None:
                dlo, dhi = _percentile(boots[m] - boots[best], confidence)
                d = means[m] - means[best]
            else:
                dlo = dhi = d = float("nan")
            p, eff = tests[m]
            ce = (
                celleval_score(means[m], means["cell_mean"], higher_is_better=higher)
                if "cell_mean" in present
                else float("nan")
            )
            rs = (
                replicate_score(means[m], means["mean"], means[ceiling], higher_is_better=higher)
                if "mean" in present and ceiling in present
                else float("nan")
            )
            n = int(sum(np.isfinite(wide[s][m].to_numpy(float)).sum() for s in ss))
            rows.append(
                {
                    "method": m,
                    "seed": label,
                    "metric": metric,
                    "n_conditions": n,
                    "mean": means[m],
                    "ci_low": lo,
                    "ci_high": hi,
                    "baseline": best,
                    "diff": d,
                    "diff_ci_low": dlo,
                    "diff_ci_high": dhi,
                    "p_value": p,
                    "effect_size": eff,
                    "significant": bool(p < alpha) if np.isfinite(p) else False,
                    "discriminates": disc,
                    "celleval_score": ce,
                    "replicate_score": rs,
                    "note": note,
                }
            )
    return rows
