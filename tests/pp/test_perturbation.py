from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scfmkit as fm


def _cells(seed=0, n=12, sparse_x=False, labels=None):
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(20)]
    labels = labels or ["control", "g1", "g2", "g1+g2", "g3", "XX"]
    lab = np.repeat(labels, n)
    X = rng.poisson(2, size=(len(lab), len(genes))).astype(np.float32)
    X[lab == "g1", 1] += 30  # CRISPRa-like: the target goes up
    X[lab == "g2", 2] += 30
    a = ad.AnnData(sparse.csr_matrix(X) if sparse_x else X)
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.var_names = genes
    a.obs["condition"] = pd.Categorical(lab)
    return a


def _same(a, b):
    assert a.shape == b.shape
    pd.testing.assert_frame_equal(a.obs, b.obs)
    x, y = (m.toarray() if sparse.issparse(m) else m for m in (a.X, b.X))
    np.testing.assert_array_equal(x, y)
    assert list(a.uns) == list(b.uns)
    assert list(a.layers) == list(b.layers)


@pytest.mark.parametrize("sparse_x", [False, True])
def test_pseudobulk_counts(sparse_x, caplog):
    cells = _cells(sparse_x=sparse_x)
    before = cells.copy()
    with caplog.at_level(logging.INFO, logger="scfmkit"):
        pb = fm.pp.pseudobulk_perturbations(cells, n_top_de=3)
    assert "raw counts" in caplog.text
    _same(cells, before)
    assert list(pb.obs_names) == ["control", "XX", "g1", "g1+g2", "g2", "g3"]
    X = before.X.toarray() if sparse_x else before.X
    X = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    lab = before.obs["condition"].to_numpy()
    np.testing.assert_allclose(pb["g1"].X[0], X[lab == "g1"].mean(0), rtol=1e-5)
    np.testing.assert_allclose(pb.var["control_mean"], X[lab == "control"].mean(0), rtol=1e-5)
    np.testing.assert_allclose(pb.layers["delta"], pb.X - pb.var["control_mean"].to_numpy(), atol=1e-12)
    assert pb.obs.loc["g1+g2", "genes"] == "g1+g2"
    assert pb.obs.loc["g1+g2", "n_perturbed"] == 2
    assert pb.obs.loc["control", "is_control"]
    assert pb.obs.loc["control", "genes"] == ""
    assert not pb.obs.loc["XX", "genes_measured"]
    assert pb.obs.loc["g3", "genes_measured"]
    top = pb.uns["perturbation"]["top_de_genes"]
    assert top["g1"][0] == "g1"
    assert top["g2"][0] == "g2"
    assert len(top["g1"]) == 3
    assert pb.layers["top_de"].sum(1).tolist() == [0, 3, 3, 3, 3, 3]
    assert pb.uns["perturbation"]["params"]["counts"] is True


def test_pseudobulk_lognorm_passthrough_and_mudata():
    import mudata as md

    cells = _cells()
    cells.X = np.log1p(cells.X) / 3.0  # non-integer -> used as it is
    pb = fm.pp.pseudobulk_perturbations(cells, n_top_de=0)
    lab = cells.obs["condition"].to_numpy()
    np.testing.assert_allclose(pb["g3"].X[0], cells.X[lab == "g3"].mean(0), rtol=1e-6)
    assert pb.uns["perturbation"]["params"]["counts"] is False
    mdata = md.MuData({"rna": cells})
    pb2 = fm.pp.pseudobulk_perturbations(mdata, mod="rna", n_top_de=0)
    np.testing.assert_allclose(pb2.X, pb.X)


def test_pseudobulk_de_matches_scanpy_on_norman(shared_dir):
    import scanpy as sc

    full = ad.read_h5ad(shared_dir / "data" / "norman2019_perturbench_subset.h5ad")
    cells = full[full.obs["dataset"] == "norman19"]
    keep = cells.obs["condition"].isin(["control", "KLF1", "MAP2K6", "KLF1+MAP2K6"]).to_numpy()
    cells = cells[keep].copy()
    pb = fm.pp.pseudobulk_perturbations(cells)
    ref = cells.copy()
    ref.obs["condition"] = ref.obs["condition"].astype(str)
    sc.tl.rank_genes_groups(ref, "condition", reference="control", method="t-test", rankby_abs=True, n_genes=20)
    for c in ["KLF1", "MAP2K6", "KLF1+MAP2K6"]:
        assert pb.uns["perturbation"]["top_de_genes"][c] == list(ref.uns["rank_genes_groups"]["names"][c])
    assert pb.uns["perturbation"]["params"]["counts"] is False  # the subset is log-normalised


@pytest.mark.parametrize(
    ("kwargs", "mutate", "err", "match"),
    [
        ({"control": "ctrl"}, None, ValueError, "Control label 'ctrl' not found"),
        ({"perturbation_key": "nope"}, None, KeyError, "not an obs column"),
        ({}, "nan", ValueError, "missing values"),
        ({}, "tiny", ValueError, "fewer than 2 cells"),
        ({}, "negative", ValueError, "negative"),
        ({"layer": "counts"}, None, KeyError, "Layer 'counts' not found"),
    ],
)
def test_pseudobulk_bad_input(kwargs, mutate, err, match):
    cells = _cells()
    if mutate == "nan":
        cond = cells.obs["condition"].astype(object)
        cond.iloc[3] = np.nan
        cells.obs["condition"] = cond
    elif mutate == "tiny":
        cond = cells.obs["condition"].astype(str)
        cond.iloc[0] = "lonely"
        cells.obs["condition"] = cond
    elif mutate == "negative":
        cells.X = cells.X - 5
    before = cells.copy()
    with pytest.raises(err, match=match):
        fm.pp.pseudobulk_perturbations(cells, **kwargs)
    _same(cells, before)


def test_parse_condition():
    assert fm.pp.parse_condition("A+B") == ("A", "B")
    assert fm.pp.parse_condition("A+ctrl", control="ctrl") == ("A",)
    assert fm.pp.parse_condition("control") == ()


@pytest.fixture
def combo_pb():
    singles = [f"s{i}" for i in range(8)]
    doubles = [f"s{i}+s{j}" for i in range(8) for j in range(i + 1, 8)][:12]
    return fm.pp.pseudobulk_perturbations(_cells(n=3, labels=["control", *singles, *doubles]), n_top_de=0)


def test_split_random(combo_pb):
    a = fm.pp.split_perturbations(combo_pb, method="random", test_fraction=0.25, rng=0, copy=True)
    b = fm.pp.split_perturbations(combo_pb, method="random", test_fraction=0.25, rng=0, copy=True)
    assert "split" not in combo_pb.obs  # copy=True leaves the input alone
    pd.testing.assert_series_equal(a.obs["split"], b.obs["split"])
    assert a.obs.loc["control", "split"] == "train"
    assert (a.obs["split"] == "test").sum() == round(0.25 * (combo_pb.n_obs - 1))
    assert a.uns["split"]["params"]["method"] == "random"
    c = fm.pp.split_perturbations(combo_pb, method="random", rng=np.random.default_rng(1), copy=True)
    assert set(c.obs["split"].astype(str)) == {"train", "test"}


def test_split_double(combo_pb):
    fm.pp.split_perturbations(combo_pb, method="double", rng=3)
    s = combo_pb.obs["split"].astype(str)
    n_pert = combo_pb.obs["n_perturbed"]
    assert (s[n_pert <= 1] == "train").all()
    doubles = s[n_pert == 2]
    assert (doubles == "train").sum() == 6
    assert (doubles == "test").sum() == 3
    assert (doubles == "holdout").sum() == 3


def test_split_simulation(combo_pb):
    fm.pp.split_perturbations(combo_pb, method="simulation", rng=0)
    obs = combo_pb.obs
    train_genes = {g for gs in obs.loc[obs["split"] != "test", "genes"] for g in gs.split("+") if g}
    for cond, row in obs[obs["split"] == "test"].iterrows():
        genes = row["genes"].split("+")
        seen = sum(g in train_genes for g in genes)
        sub = row["split_subgroup"]
        if len(genes) == 1:
            assert sub == "unseen_single", cond
            assert seen == 0, cond
        else:
            assert sub.startswith("combo_seen")
    assert set(obs["split"].astype(str)) <= {"train", "test", "holdout"}


def test_split_unmeasured():
    pb = fm.pp.pseudobulk_perturbations(_cells(n=3), n_top_de=0)
    a = fm.pp.split_perturbations(pb, method="random", test_fraction=0.99, unmeasured="train", rng=0, copy=True)
    assert a.obs.loc["XX", "split"] == "train"
    b = fm.pp.split_perturbations(pb, method="random", unmeasured="exclude", rng=0, copy=True)
    assert b.obs.loc["XX", "split"] == "excluded"


def test_split_errors(combo_pb):
    with pytest.raises(ValueError, match="method"):
        fm.pp.split_perturbations(combo_pb, method="nope")
    with pytest.raises(ValueError, match="pseudobulk"):
        fm.pp.split_perturbations(_cells())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fm.pp.split_perturbations(combo_pb, test_fraction=2.0)
