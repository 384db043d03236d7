"""Validation of dependency maps: AUROC/AUPRC kernels, ground truths, the varp wrapper."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scfmkit as fm
from scfmkit.metrics._dependency import score_against_truth


def test_auroc_auprc_known_values():
    y = np.array([1, 0, 1, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.2])
    # positives ranked 1st and 3rd: AUROC = (3 + 2) / 6, AP = (1/1 + 2/3) / 2
    assert fm.metrics.auroc(y, s) == pytest.approx(5 / 6)
    assert fm.metrics.auprc(y, s) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(fm.metrics.auroc(np.ones(3, bool), s[:3]))
    assert np.isnan(fm.metrics.auprc(np.zeros(3, bool), s[:3]))


def test_score_against_truth_uses_common_pairs_and_abs():
    truth = np.array([[True, False, False, True], [False, True, False, False]])
    model = np.array([[-0.9, 0.1, 0.2, 0.8], [0.1, 0.9, np.nan, 0.0]])
    other = np.array([[0.1, 0.9, 0.8, 0.2], [0.5, 0.4, 0.3, 0.2]])
    out = score_against_truth({"model": model, "other": other}, truth, sources=["a", "b"])
    m = out.set_index(["map", "source"])
    assert m.loc[("model", "a"), "auroc"] == 1.0  # |-0.9| ranks first
    assert m.loc[("model", "b"), "n_targets"] == 3  # the NaN pair is dropped for every map
    assert m.loc[("other", "b"), "n_targets"] == 3
    assert m.loc[("model", "all"), "n_targets"] == 7
    assert m.loc[("other", "a"), "auroc"] == 0.0
    signed = score_against_truth({"model": model}, truth, sources=["a", "b"], absolute=False)
    assert signed.set_index("source").loc["a", "auroc"] == 0.5


def _screen(seed=0):
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(12)]
    lab = np.repeat(["control", "g0", "g1", "g0+g1"], 30)
    X = rng.poisson(3, size=(len(lab), 12)).astype(np.float32)
    X[lab == "g0", 5] += 30
    X[lab == "g1", 7] += 30
    a = ad.AnnData(X)
    a.var_names = genes
    a.obs_names = [f"c{i}" for i in range(len(lab))]
    a.obs["condition"] = lab
    return a


def test_measured_and_de_effects():
    a = _screen()
    pb = fm.pp.pseudobulk_perturbations(a, n_top_de=2)
    m = fm.metrics.measured_effects(pb, threshold=1.0)
    assert list(m.index) == ["g0", "g1"]
    assert m.loc["g0", "g5"] and m.loc["g1", "g7"] and not m.loc["g0", "g7"]
    top = fm.metrics.measured_effects(pb, top_k=1)
    assert top.loc["g0"].idxmax() == "g5" and top.loc["g1"].idxmax() == "g7" and top.sum(1).tolist() == [1, 1]
    assert not fm.metrics.measured_effects(pb, threshold=0.0).loc["g0", "g0"]  # the perturbed gene itself
    de = fm.metrics.de_effects(a, fdr=0.01)
    assert de.loc["g0", "g5"] and de.loc["g1", "g7"]
    # the same calls as Welch t-tests on log1p(CP10k) with Benjamini-Hochberg per condition
    from scipy.stats import false_discovery_control, ttest_ind

    L = np.log1p(a.X / a.X.sum(1, keepdims=True) * 1e4)
    lab = a.obs["condition"].to_numpy()
    p = ttest_ind(L[lab == "g1"], L[lab == "control"], equal_var=False).pvalue
    expect = false_discovery_control(p) < 0.01
    expect[1] = False
    np.testing.assert_array_equal(de.loc["g1"].to_numpy(), expect)
    with pytest.raises(ValueError, match="`method`"):
        fm.metrics.measured_effects(pb, method="pvalue")


def test_edges_truth_collectri_format():
    net = pd.DataFrame({"source": ["A", "A", "B"], "target": ["x", "y", "x"], "weight": [1, -1, 0]})
    t = fm.metrics.edges_truth(net, ["x", "y", "z"])
    assert list(t.index) == ["A"]  # B's only edge has weight 0
    assert t.loc["A"].tolist() == [True, True, False]


def test_dependency_validation_reads_varp():
    a = _screen()
    n = a.n_vars
    key = "toy_dependency"
    good = np.full((n, n), np.nan, np.float32)
    good[0] = 0.0
    good[0, 5] = 1.0
    good[0, 7] = 0.5
    good[1] = 0.0
    good[1, 7] = 1.0
    good[1, 5] = 0.5
    noise = np.full((n, n), np.nan, np.float32)
    noise[[0, 1]] = np.random.default_rng(0).random((2, n))
    a.varp[key] = good
    a.varp[f"{key}_coexpression"] = noise
    a.varp[f"{key}_n_cells"] = np.ones((n, n), np.float32)
    a.uns[key] = {"sources": ["g0", "g1"]}
    pb = fm.pp.pseudobulk_perturbations(a, n_top_de=2)
    out = fm.metrics.dependency_validation(a, fm.metrics.measured_effects(pb, top_k=1), key=key)
    r = out.set_index(["map", "source"])
    assert set(out["map"]) == {"model", "coexpression"}
    assert r.loc[("model", "all"), "auroc"] == 1.0 and r.loc[("model", "all"), "auprc"] == 1.0
    assert r.loc[("model", "g0"), "n_targets"] == n - 1  # the source itself left out
    # an edge table and the pseudobulk itself are accepted as truth
    net = pd.DataFrame({"source": ["g0"], "target": ["g5"], "weight": [1.0]})
    e = fm.metrics.dependency_validation(a, net, key=key, maps=["model"])
    assert e.set_index("source").loc["g0", "auroc"] == 1.0
    assert fm.metrics.dependency_validation(a, pb, key=key).shape[0] == 6
    with pytest.raises(KeyError, match="run `scfmkit.tl.gene_dependency`"):
        fm.metrics.dependency_validation(a, pb, key="nope")
    with pytest.raises(ValueError, match="None of the mapped sources"):
        fm.metrics.dependency_validation(a, pd.DataFrame(True, index=["zz"], columns=["g5"]), key=key)
