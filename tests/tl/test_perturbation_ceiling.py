"""The ``replicate`` row (split-half ceiling) and the ``cell_mean`` floor of the perturbation benchmark."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scfmkit as fm
from scfmkit.tl._perturbation._replicate import replicate_seed


def _cells(seed=0, n=8, n_genes=30):
    rng = np.random.default_rng(seed)
    labels = ["control", "g1", "g2", "g3", "g4", "g1+g2", "g3+g4", "g1+g3"]
    lab = np.repeat(labels, n)
    X = rng.poisson(2, size=(len(lab), n_genes)).astype(np.float64)
    for i in range(1, 5):
        X[np.array([f"g{i}" in c.split("+") for c in lab]), 5 + i] += 15
    a = ad.AnnData(X, obs=pd.DataFrame({"condition": pd.Categorical(lab)}, index=[f"c{i}" for i in range(lab.size)]))
    a.var_names = [f"g{i}" for i in range(n_genes)]
    return a


def test_replicate_seed_is_celleval2s():
    # cell-eval2: numpy.random.SeedSequence(base_seed).generate_state(n_splits); the golden's seed for base 0
    assert replicate_seed(0) == int(np.random.SeedSequence(0).generate_state(1)[0])
    assert replicate_seed(0) != replicate_seed(1)


def test_cell_mean_predictor():
    pb = fm.pp.pseudobulk_perturbations(_cells())
    train = ["g1", "g2", "g3"]
    pred = fm.tl.fit_predictor(pb, "cell_mean", train=train).predict(["g4"])
    # the mean of the control and the three training means (cell-eval's baseline)
    np.testing.assert_allclose(pred.to_numpy()[0], pb[["control", *train]].X.mean(0), atol=1e-12)


def test_benchmark_replicate_row():
    cells = _cells()
    before = cells.copy()
    kw = {"methods": ["control", "mean", "cell_mean"], "split": "random", "seeds": [0, 1]}
    kw["split_options"] = {"test_fraction": 0.5}
    df = fm.tl.benchmark_perturbation(cells, **kw)
    np.testing.assert_array_equal(cells.X, before.X)  # the caller's cells untouched
    assert cells.obs.equals(before.obs)
    assert list(pd.unique(df["method"])) == ["control", "mean", "cell_mean", "replicate"]
    assert {"overlap_at_N", "precision_at_N", "mae", "discrimination_score_l1"} <= set(df["metric"])
    # every method, the replicate included, is scored on the same conditions
    per = df.groupby(["seed", "method"])["condition"].apply(frozenset).unstack()
    assert all(len(set(row)) == 1 for _, row in per.iterrows())
    # seeded: the same table again
    pd.testing.assert_frame_equal(df, fm.tl.benchmark_perturbation(cells, **kw))
    # the replicate's mae by hand: half B's mean against half A's, halves from cell-eval2's split of the scored cells
    seed = 1
    conds = sorted(df.loc[(df["seed"] == seed) & (df["method"] == "replicate"), "condition"].unique())
    pb = fm.pp.pseudobulk_perturbations(cells)
    cs = fm.metrics.cell_set(cells, pb)
    rows = np.flatnonzero(np.isin(cs.labels, [*conds, "control"]))
    a, b = fm.metrics.split_halves(cs.labels[rows], rng=replicate_seed(seed))
    ha, hb = cs.subset(rows[a]), cs.subset(rows[b])
    got = df[(df["seed"] == seed) & (df["method"] == "replicate") & (df["metric"] == "mae")].set_index("condition")
    for c in conds:
        assert got.loc[c, "value"] == pytest.approx(np.abs(hb.mean(c) - ha.mean(c)).mean(), abs=1e-12)
    assert set(df.attrs["n_true_de"]) == {0, 1}


def test_benchmark_of_a_pseudobulk_has_no_replicate():
    pb = fm.pp.pseudobulk_perturbations(_cells())
    df = fm.tl.benchmark_perturbation(pb, methods=["control", "mean"], seeds=[0], split_options={"test_fraction": 0.5})
    assert "replicate" not in set(df["method"])
    assert "overlap_at_N" not in set(df["metric"])  # the DE metrics need cells
    with pytest.raises(ValueError, match="cells="):
        fm.tl.benchmark_perturbation(pb, methods=["control"], seeds=[0], metrics=["overlap_at_N"])


def test_benchmark_refuses_a_method_named_replicate():
    with pytest.raises(ValueError, match="replicate"):
        fm.tl.benchmark_perturbation(_cells(), methods={"replicate": {"method": "mean"}}, seeds=[0])
