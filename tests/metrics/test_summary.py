"""summarize_benchmark: intervals, paired Wilcoxon tests, discrimination notes and normalised scores, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scfmkit as fm


def _table(values: dict[str, list[float]], metric="pearson_delta", seed=0):
    rows = [
        {"method": m, "seed": seed, "condition": f"c{i}", "metric": metric, "value": v}
        for m, vs in values.items()
        for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_paired_test_by_hand():
    base = np.linspace(0.1, 0.8, 8)
    t = _table({"mean": base, "control": base - 0.5, "good": base + 0.1, "replicate": base + 0.3})
    keep = t.copy()
    s = fm.metrics.summarize_benchmark(t, n_boot=200).set_index("method")
    pd.testing.assert_frame_equal(t, keep)  # input untouched
    assert (s["baseline"] == "mean").all()  # the better of the two floors
    # better on all 8 conditions: exact two-sided Wilcoxon p = 2 / 2**8, rank-biserial effect 1
    assert s.loc["good", "p_value"] == pytest.approx(2 / 2**8)
    assert s.loc["good", "effect_size"] == pytest.approx(1.0)
    assert s.loc["control", "effect_size"] == pytest.approx(-1.0)  # worse everywhere
    assert s.loc["good", "diff"] == pytest.approx(0.1)
    assert bool(s.loc["good", "significant"])
    # paired bootstrap: the difference is the same 0.1 on every condition, so every resample gives 0.1
    assert s.loc["good", "diff_ci_low"] == pytest.approx(0.1)
    assert s.loc["good", "diff_ci_high"] == pytest.approx(0.1)
    assert s.loc["good", "ci_low"] <= s.loc["good", "mean"] <= s.loc["good", "ci_high"]
    assert bool(s.loc["good", "discriminates"])
    assert s.loc["good", "note"] == ""
    # (u - b) / (r - b) = 0.1 / 0.3 against the mean row and the replicate
    assert s.loc["good", "replicate_score"] == pytest.approx(1 / 3)
    assert s.loc["replicate", "replicate_score"] == pytest.approx(1.0)


def test_lower_is_better_and_celleval_score():
    b = np.full(6, 0.4)
    t = _table({"cell_mean": b, "m": b / 2, "replicate": b / 4}, metric="mae")
    s = fm.metrics.summarize_benchmark(t, n_boot=50).set_index("method")
    # cell-eval: 1 - u / b = 0.5 against the cell-mean baseline
    assert s.loc["m", "celleval_score"] == pytest.approx(0.5)
    assert s.loc["m", "effect_size"] == pytest.approx(1.0)  # lower = better, signed as better
    # 6 pairs: the smallest two-sided exact p is 2/64 < 0.05, so the ceiling can be tested
    assert bool(s.loc["replicate", "discriminates"])


def test_cannot_discriminate_and_too_few():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=12)
    t = _table({"mean": np.zeros(12), "replicate": noise, "x": noise[::-1]}, metric="overlap_at_N")
    t.attrs["n_true_de"] = {0: {f"c{i}": n for i, n in enumerate([0, 1, 2, 2, 3, 2, 9, 2, 1, 2, 4, 2])}}
    s = fm.metrics.summarize_benchmark(t, n_boot=50).set_index("method")
    assert not bool(s.loc["x", "discriminates"])
    assert s.loc["x", "note"].startswith("cannot discriminate")
    assert "median 2 cell-eval DE genes" in s.loc["x", "note"]
    small = _table({"mean": np.zeros(4), "replicate": np.ones(4)})
    s = fm.metrics.summarize_benchmark(small, n_boot=50).set_index("method")
    assert s.loc["replicate", "note"].startswith("too few conditions")  # 2/2**4 > 0.05 even when always better


def test_seeds_kept_apart_and_vcc_score():
    frames = []
    for seed, shift in [(0, 0.0), (1, 0.2)]:
        for metric in ["mae", "discrimination_score_l1", "overlap_at_N"]:
            base = np.linspace(0.2, 0.6, 7) + shift
            vals = {"cell_mean": base, "m": base + (0.1 if metric != "mae" else -0.1)}
            frames.append(_table(vals, metric=metric, seed=seed))
    t = pd.concat(frames, ignore_index=True)
    s = fm.metrics.summarize_benchmark(t, n_boot=100)
    one = s[(s["method"] == "m") & (s["metric"] == "discrimination_score_l1")].set_index("seed")
    assert set(one.index) == {0, 1, "all"}
    # "all" averages the per-seed means
    assert one.loc["all", "mean"] == pytest.approx((one.loc[0, "mean"] + one.loc[1, "mean"]) / 2)
    vcc = s[(s["metric"] == "vcc2025_score") & (s["method"] == "m")].set_index("seed")
    parts = s[
        (s["method"] == "m") & (s["seed"] == 0) & s["metric"].isin(["mae", "discrimination_score_l1", "overlap_at_N"])
    ]
    assert vcc.loc[0, "mean"] == pytest.approx(parts["celleval_score"].mean())


def test_bad_input():
    with pytest.raises(ValueError, match="columns"):
        fm.metrics.summarize_benchmark(pd.DataFrame({"method": ["a"]}))
    with pytest.raises(ValueError, match="confidence"):
        fm.metrics.summarize_benchmark(_table({"mean": [1, 2]}), confidence=1.5)
