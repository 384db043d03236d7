from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import scfmkit as fm


@pytest.fixture
def pb():
    rng = np.random.default_rng(0)
    lab = np.repeat(["control", "g1", "g2", "g1+g2"], 8)
    X = rng.poisson(2, size=(len(lab), 25)).astype(float)
    X[lab == "g1", 1] += 20
    cells = ad.AnnData(X, obs=pd.DataFrame({"condition": lab}, index=[f"c{i}" for i in range(len(lab))]))
    cells.var_names = [f"g{i}" for i in range(25)]
    p = fm.pp.pseudobulk_perturbations(cells, n_top_de=5)
    fm.tl.predict_perturbation(p, method="additive", train=["g1", "g2"], conditions=["g1+g2"])
    fm.tl.predict_perturbation(p, method="control", train=["g1", "g2"], conditions=["g1+g2"])
    return p


def test_metric_panels(pb):
    df = pd.concat(
        [
            fm.metrics.perturbation_metrics(pb, "pred_additive").assign(method="additive", seed=0),
            fm.metrics.perturbation_metrics(pb, "pred_control").assign(method="control", seed=0),
        ]
    )
    for kind in ["box", "strip"]:
        fig = fm.pl.perturbation_metrics(df, metrics=["pearson_delta", "mse", "l2_top1000"], kind=kind, return_fig=True)
        assert len([a for a in fig.axes if a.get_visible()]) == 3
        plt.close(fig)
    assert fm.pl.perturbation_metrics(df, show=False) is None
    with pytest.raises(ValueError, match="columns"):
        fm.pl.perturbation_metrics(df.drop(columns="method"))
    with pytest.raises(ValueError, match="kind"):
        fm.pl.perturbation_metrics(df, kind="violin")


def test_scatter(pb):
    fig = fm.pl.perturbation_scatter(pb, "g1+g2", layers=["pred_additive", "pred_control"], return_fig=True)
    assert len(fig.axes) == 2
    assert "r = " in fig.axes[0].get_title()
    plt.close(fig)
    fig = fm.pl.perturbation_scatter(pb, "g1", layers="pred_additive", genes="de", return_fig=True)
    assert "not predicted" in fig.axes[0].texts[0].get_text()
    plt.close(fig)
    with pytest.raises(KeyError, match="Layers"):
        fm.pl.perturbation_scatter(pb, "g1+g2", layers="nope")
    with pytest.raises(KeyError, match="not a row"):
        fm.pl.perturbation_scatter(pb, "zzz")


def test_metric_panels_floor_ceiling_and_tests():
    rng = np.random.default_rng(0)
    base = rng.normal(0.3, 0.1, 10)
    rows = []
    for m, shift in [("mean", 0.0), ("control", -0.2), ("a", 0.001), ("b", 0.3), ("replicate", 0.5)]:
        rows += [
            {"method": m, "seed": 0, "condition": f"c{i}", "metric": "pearson_delta", "value": v + shift}
            for i, v in enumerate(base + (rng.normal(0, 0.05, 10) if m == "a" else 0))
        ]
    df = pd.DataFrame(rows)
    fig = fm.pl.perturbation_metrics(df, return_fig=True)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels.count("n.s.") == 1 and labels.count("*") >= 1  # a: not different from the floor; b: is
    assert {ln.get_label() for ln in ax.get_lines()} >= {"floor (mean)", "ceiling (replicate)"}
    assert "higher is better" in ax.get_title()
    plt.close(fig)
    fig = fm.pl.perturbation_metrics(df, summary=False, return_fig=True)
    assert not fig.axes[0].texts
    plt.close(fig)
