"""``geneformer_probe`` and ``pca_probe``: in-silico shifts of control cells -> ridge readout -> pseudobulk."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import scfmkit as fm
from scfmkit.tl._perturbation._probe import ridge_readout

CONDS = ["control", "KLF1", "SGK1", "MAPK1", "TGFBR2", "MAP2K6", "TMSB4X", "KLF1+TGFBR2", "MAPK1+TGFBR2", "KLF1+MAP2K6"]


@pytest.fixture(scope="module")
def cells(shared_dir):
    import anndata as ad

    a = ad.read_h5ad(shared_dir / "data" / "norman2019_perturbench_subset.h5ad")
    a = a[(a.obs["dataset"] == "norman19").to_numpy() & a.obs["condition"].isin(CONDS).to_numpy()]
    lab = a.obs["condition"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    picks = [rng.choice(np.flatnonzero(lab == c), 12 if c == "control" else 5, replace=False) for c in CONDS]
    out = a[np.sort(np.concatenate(picks))].copy()
    out.X = sparse.csr_matrix(out.X)
    return out


@pytest.fixture(scope="module")
def pdata(cells):
    pb = fm.pp.pseudobulk_perturbations(cells, n_top_de=0)
    pb.obs["split"] = ["test" if c in {"KLF1+MAP2K6", "TMSB4X"} else "train" for c in pb.obs_names]
    return pb


@pytest.fixture(scope="module")
def gf_dir(shared_dir, tmp_path_factory):
    from scfmkit.models.geneformer import write_random_checkpoint

    # seed 7: the "pretrained" stand-in differs from weights="random" (seed 0)
    tiny = {"seed": 7, "num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    return write_random_checkpoint(
        tmp_path_factory.mktemp("gf") / "v1", shared_dir / "models" / "geneformer-v1", **tiny
    )


def _train(pdata):
    return list(pdata.obs_names[pdata.obs["split"] == "train"])


def test_ridge_readout_is_ridge_with_standardised_features():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    S, D = rng.normal(size=(12, 5)) * 1e-3, rng.normal(size=(12, 7))
    W, b, mu, sd = ridge_readout(S, D, 2.0)
    ref = Ridge(alpha=2.0).fit((S - S.mean(0)) / S.std(0), D)
    np.testing.assert_allclose(W, ref.coef_.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b, ref.intercept_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(mu, S.mean(0))
    np.testing.assert_allclose(sd, S.std(0))


def test_geneformer_probe(cells, pdata, gf_dir):
    before = cells.copy()
    p = fm.tl.GeneformerProbePredictor(model=gf_dir, n_cells=8).fit(pdata, _train(pdata), cells=cells)
    assert p._mode_of("KLF1") == "overexpress"  # Norman is CRISPRa (obs['perturbation_type'])
    pred = p.predict(["KLF1+MAP2K6", "TMSB4X"])
    assert pred.shape == (2, pdata.n_vars) and np.isfinite(pred.to_numpy()).all()
    assert np.abs(p.train_shifts[1:]).sum() > 0 and np.abs(p.train_shifts[0]).sum() == 0  # control has no shift
    # the random-weight control: same readout, other features
    r = fm.tl.GeneformerProbePredictor(model=gf_dir, weights="random", n_cells=8).fit(pdata, _train(pdata), cells=cells)
    assert not np.allclose(r.train_shifts, p.train_shifts)
    # the same rng gives the same predictions
    q = fm.tl.GeneformerProbePredictor(model=gf_dir, n_cells=8).fit(pdata, _train(pdata), cells=cells)
    np.testing.assert_array_equal(q.predict(["KLF1+MAP2K6", "TMSB4X"]).to_numpy(), pred.to_numpy())
    assert (cells.X != before.X).nnz == 0


def test_geneformer_probe_delete_of_unexpressed_gene_is_zero(cells, pdata, gf_dir):
    p = fm.tl.GeneformerProbePredictor(model=gf_dir, n_cells=8, mode="delete").fit(pdata, _train(pdata), cells=cells)
    # KLF1 is not among the measured genes, so no control cell expresses it: deleting it changes nothing
    np.testing.assert_array_equal(p._shift("KLF1"), np.zeros(16))


def test_geneformer_probe_refuses_unknown_gene(cells, pdata, gf_dir):
    p = fm.tl.GeneformerProbePredictor(model=gf_dir, n_cells=8).fit(pdata, _train(pdata), cells=cells)
    assert "NOTAGENE9" in p.why_not("NOTAGENE9")
    with pytest.raises(ValueError, match="NOTAGENE9"):
        p.predict(["NOTAGENE9"])


def test_pca_probe(cells, pdata):
    p = fm.tl.PCAProbePredictor(n_cells=12, n_components=5).fit(pdata, _train(pdata), cells=cells)
    assert np.abs(p._shift("TMSB4X")).sum() > 0  # measured: its expression is raised to the control maximum
    np.testing.assert_array_equal(p._shift("KLF1"), np.zeros(p.V.shape[1]))  # unmeasured: no change
    i = list(p.var_names).index("TMSB4X")
    Xp = p.x_ctrl.copy()
    Xp[:, i] = p.x_ctrl[:, i].max()
    np.testing.assert_allclose(p._shift("TMSB4X"), (Xp.mean(0) - p.x_ctrl.mean(0)) @ p.V)
    assert np.isfinite(p.predict(["KLF1+MAP2K6", "TMSB4X"]).to_numpy()).all()


def test_benchmark_with_probes(cells, gf_dir):
    res = fm.tl.benchmark_perturbation(
        cells,
        methods={
            "mean": {},
            "geneformer_probe (random weights)": {"method": "geneformer_probe", "model": gf_dir, "n_cells": 6},
            "pca_probe": {"n_cells": 6, "n_components": 4},
        },
        split="random",
        seeds=[0],
        replicate=False,
    )
    assert set(res["method"]) == {"mean", "geneformer_probe (random weights)", "pca_probe"}
    counts = res.groupby("method").size()
    assert counts.nunique() == 1


@pytest.mark.parametrize("what", ["nan", "counts"])
def test_probe_bad_cells_are_refused_untouched(cells, pdata, what):
    bad = cells.copy()
    X = bad.X.toarray()
    if what == "nan":
        X[2, 3] = np.nan
    else:
        X = np.round(np.expm1(X) * 3)
    bad.X = sparse.csr_matrix(X)
    before, p0 = bad.copy(), pdata.copy()
    with pytest.raises(ValueError, match="NaN" if what == "nan" else "raw counts"):
        fm.tl.PCAProbePredictor(n_cells=12).fit(pdata, _train(pdata), cells=bad)
    np.testing.assert_array_equal(bad.X.toarray(), before.X.toarray())
    np.testing.assert_array_equal(pdata.X, p0.X)


@pytest.mark.parametrize("which", ["pca_probe", "geneformer_probe"])
def test_probe_save_load_round_trip(cells, pdata, gf_dir, tmp_path, which):
    import json

    if which == "pca_probe":
        cls, kw = fm.tl.PCAProbePredictor, {"n_cells": 12, "n_components": 5}
    else:
        cls, kw = fm.tl.GeneformerProbePredictor, {"model": gf_dir, "n_cells": 8}
    p = cls(**kw).fit(pdata, _train(pdata), cells=cells)
    conds = ["KLF1+MAP2K6", "TMSB4X", "SGK1"]
    pred = p.predict(conds)
    folder = p.save(tmp_path / which)
    assert sorted(f.name for f in folder.iterdir()) == ["predictor.json", "state.safetensors"]
    json.loads((folder / "predictor.json").read_text())  # plain JSON
    q = cls.load(folder)
    assert q.fitted and q.name == which and q.options == p.options
    pd_q = q.predict(conds)
    np.testing.assert_array_equal(pd_q.to_numpy(), pred.to_numpy())
    assert list(pd_q.columns) == list(pred.columns) and list(pd_q.index) == conds
    with pytest.raises(ValueError, match="does not hold"):
        (fm.tl.GeneformerProbePredictor if which == "pca_probe" else fm.tl.PCAProbePredictor).load(folder)


def test_geneformer_probe_load_refuses_other_weights(cells, pdata, gf_dir, tmp_path):
    p = fm.tl.GeneformerProbePredictor(model=gf_dir, n_cells=8).fit(pdata, _train(pdata), cells=cells)
    folder = p.save(tmp_path / "gp")
    other = fm.models.load(gf_dir, weights="random", seed=3)
    with pytest.raises(ValueError, match="fitted with weights"):
        fm.tl.GeneformerProbePredictor.load(folder, model=other)
    with pytest.raises(RuntimeError, match="Fit"):
        fm.tl.PCAProbePredictor().save(tmp_path / "unfitted")
