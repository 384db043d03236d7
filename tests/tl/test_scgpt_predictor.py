"""The ``scgpt`` perturbation predictor: pairs, fitting, determinism, save/load, benchmark, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import scfmkit as fm
from scfmkit.tl import ScGPTPredictor

CONDS = ["control", "KLF1", "SGK1", "MAPK1", "TGFBR2", "MAP2K6", "TMSB4X", "KLF1+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"]
SMALL = {"nlayers": 2, "embsize": 16, "nheads": 2, "d_hid": 16}


@pytest.fixture(scope="module")
def cells(shared_dir):
    """Norman 2019 CRISPRa cells: 10 conditions, 6 cells each (12 controls), 60 genes (TMSB4X is measured)."""
    import anndata as ad

    a = ad.read_h5ad(shared_dir / "data" / "norman2019_perturbench_subset.h5ad")
    a = a[(a.obs["dataset"] == "norman19").to_numpy() & a.obs["condition"].isin(CONDS).to_numpy()]
    rng = np.random.default_rng(0)
    lab = a.obs["condition"].astype(str).to_numpy()
    rows = np.sort(
        np.concatenate([rng.choice(np.flatnonzero(lab == c), 12 if c == "control" else 6, False) for c in CONDS])
    )
    expressed = np.asarray((a.X[rows] > 0).sum(0)).ravel()
    genes = list(a.var_names[np.argsort(-expressed)[:59]])
    genes = [*genes, "TMSB4X"] if "TMSB4X" not in genes else [*genes, a.var_names[np.argsort(-expressed)[59]]]
    out = a[rows, genes].copy()
    out.X = sparse.csr_matrix(out.X)
    return out


@pytest.fixture(scope="module")
def pdata(cells):
    pb = fm.pp.pseudobulk_perturbations(cells, n_top_de=5)
    fm.pp.split_perturbations(pb, method="double", rng=0)
    return pb


def _opts(shared_dir, **kw):
    opts = {
        "model": shared_dir / "models" / "scgpt-human",
        "weights": "random",
        "architecture": SMALL,
        "epochs": 2,
        "batch_size": 16,
        "n_pool": 6,
        "rng": 0,
    }
    return {**opts, **kw}


def _train(pdata):
    return list(pdata.obs_names[pdata.obs["split"] == "train"])


@pytest.fixture(scope="module")
def fitted(cells, pdata, shared_dir):
    return ScGPTPredictor(**_opts(shared_dir)).fit(pdata, _train(pdata), cells=cells)


def test_registered():
    assert "scgpt" in fm.tl.available_predictors()
    assert ScGPTPredictor.needs_cells and not fm.tl.PerturbationPredictor.needs_cells


def test_fit_predict(fitted, pdata):
    test = list(pdata.obs_names[pdata.obs["split"] != "train"])
    pred = fitted.predict(test)
    assert list(pred.columns) == list(pdata.var_names) and list(pred.index) == test
    assert np.isfinite(pred.to_numpy()).all()
    log = fitted.train_log
    assert len(log["loss"]) == 2 and len(log["val_score"]) == 2 and 1 <= log["best_epoch"] <= 2
    assert fitted.validation_conditions and not set(fitted.validation_conditions) & set(test)
    assert fitted.load_report["kind"] == "random"
    # the mean of the predicted cells is the prediction
    pc = fitted.predict_cells(test[:1])
    assert pc.shape == (6, pdata.n_vars)
    np.testing.assert_allclose(pc.X.astype(np.float64).mean(0), pred.iloc[0].to_numpy(), rtol=1e-6, atol=1e-7)


def test_sequence_layout(fitted, pdata):
    """Measured perturbed genes are flagged in place; unmeasured ones are appended as flagged vocabulary tokens."""
    from scfmkit.tl._perturbation._scgpt_train import make_batch

    tok, bad = fitted._tokens_of("KLF1+TMSB4X")
    pos = list(pdata.var_names).index("TMSB4X")
    assert bad == [] and tok.flag_positions == (pos,) and tok.extra_tokens == (fitted.vocab["KLF1"],)
    x = np.ones((2, pdata.n_vars), np.float32)
    ctrl_tok, _ = fitted._tokens_of("control")
    t, v, f, lens, mask, _ = make_batch(x, [tok, ctrl_tok], fitted.gene_tokens, pad_id=fitted.pad_id, pert_pad_id=0)
    g = pdata.n_vars
    assert t.shape == (2, g + 1) and lens.tolist() == [g + 1, g]
    assert t[0, g] == fitted.vocab["KLF1"] and v[0, g] == 0 and f[0, g] == 1 and f[0, pos] == 1
    assert f[0].sum() == 2 and f[1].sum() == 0 and t[1, g] == fitted.pad_id
    assert mask[:, :g].all() and not mask[:, g:].any()


def test_same_rng_same_predictions(cells, pdata, shared_dir, fitted):
    again = ScGPTPredictor(**_opts(shared_dir)).fit(pdata, _train(pdata), cells=cells)
    conds = ["KLF1+MAP2K6", "MAPK1+TGFBR2"]
    np.testing.assert_array_equal(again.predict(conds).to_numpy(), fitted.predict(conds).to_numpy())
    other = ScGPTPredictor(**_opts(shared_dir, rng=1)).fit(pdata, _train(pdata), cells=cells)
    assert not np.array_equal(other.predict(conds).to_numpy(), fitted.predict(conds).to_numpy())


def test_save_load(fitted, tmp_path):
    fitted.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "model.safetensors",
        "predictor.json",
        "state.safetensors",
        "vocab.json",
    ]
    back = ScGPTPredictor.load(tmp_path / "p")
    conds = ["KLF1+MAP2K6", "SGK1"]
    np.testing.assert_array_equal(back.predict(conds).to_numpy(), fitted.predict(conds).to_numpy())


def test_benchmark_scores_scgpt(cells, shared_dir):
    before = cells.copy()
    opts = _opts(shared_dir, epochs=1)
    res = fm.tl.benchmark_perturbation(
        cells, methods={"control": {}, "scgpt": {"method": "scgpt", **opts}}, split="double", seeds=[0], replicate=False
    )
    assert set(res["method"]) == {"control", "scgpt"}
    a = res[res.method == "control"].set_index(["condition", "metric"]).index
    b = res[res.method == "scgpt"].set_index(["condition", "metric"]).index
    assert set(a) == set(b) and len(a) > 0
    assert (cells.X != before.X).nnz == 0


def test_needs_cells(pdata, shared_dir):
    with pytest.raises(ValueError, match="cells="):
        ScGPTPredictor(**_opts(shared_dir)).fit(pdata, _train(pdata))
    with pytest.raises(ValueError, match="cell-level"):
        fm.tl.benchmark_perturbation(pdata, methods={"scgpt": _opts(shared_dir)}, seeds=[0])


# ------------------------------------------------------------------------------------------ bad input
def _same(a, b) -> bool:
    xa = a.X.toarray() if sparse.issparse(a.X) else np.asarray(a.X)
    xb = b.X.toarray() if sparse.issparse(b.X) else np.asarray(b.X)
    return np.array_equal(xa, xb, equal_nan=True) and a.obs.equals(b.obs) and list(a.var_names) == list(b.var_names)


def _fails(cells, pdata, shared_dir, match, train=None):
    c0, p0 = cells.copy(), pdata.copy()
    with pytest.raises((ValueError, KeyError), match=match):
        ScGPTPredictor(**_opts(shared_dir, epochs=0)).fit(pdata, train or _train(pdata), cells=cells)
    assert _same(cells, c0) and _same(pdata, p0)


def test_gene_neither_measured_nor_in_vocab(cells, shared_dir):
    bad = cells.copy()
    lab = bad.obs["condition"].astype(str).replace({"SGK1": "NOTAGENE9"})
    bad.obs["condition"] = lab.to_numpy()
    pb = fm.pp.pseudobulk_perturbations(bad, n_top_de=0)
    _fails(bad, pb, shared_dir, "NOTAGENE9", train=list(pb.obs_names))


def test_predict_refuses_unknown_gene(fitted):
    assert "NOTAGENE9" in fitted.why_not("NOTAGENE9+KLF1")
    with pytest.raises(ValueError, match="NOTAGENE9"):
        fitted.predict(["NOTAGENE9+KLF1"])


def test_condition_without_cells(cells, pdata, shared_dir):
    sub = cells[cells.obs["condition"] != "SGK1"].copy()
    _fails(sub, pdata, shared_dir, "no cells", train=[*_train(pdata), "SGK1"])


def test_counts_instead_of_lognormalised(cells, pdata, shared_dir):
    counts = cells.copy()
    counts.X = sparse.csr_matrix(np.round(np.expm1(cells.X.toarray()) * 3))
    _fails(counts, pdata, shared_dir, "raw counts")


def test_lognormalised_instead_of_counts(cells, pdata, shared_dir):
    counts = cells.copy()
    counts.X = sparse.csr_matrix(np.round(np.expm1(cells.X.toarray()) * 3))
    pb = fm.pp.pseudobulk_perturbations(counts, n_top_de=0)
    fm.pp.split_perturbations(pb, method="double", rng=0)
    _fails(cells, pb, shared_dir, "another scale")


def test_too_few_control_cells(cells, pdata, shared_dir):
    lab = cells.obs["condition"].astype(str).to_numpy()
    keep = np.flatnonzero(lab != "control").tolist() + [int(np.flatnonzero(lab == "control")[0])]
    _fails(cells[sorted(keep)].copy(), pdata, shared_dir, "control cell")


def test_nan(cells, pdata, shared_dir):
    bad = cells.copy()
    X = bad.X.toarray()
    X[3, 2] = np.nan
    bad.X = X
    _fails(bad, pdata, shared_dir, "NaN")


def test_tutorial_generator_checkpoint_predicts_without_training(cells, pdata, shared_dir, tmp_path):
    """A state dict saved by the reference tutorial (flash ``Wqkv`` naming, ``cls_decoder`` head) with epochs=0."""
    import torch

    from scfmkit.models._scgpt_generator import load_scgpt_generator, state_dict_in_naming
    from scfmkit.models.scgpt import write_random_checkpoint

    ck = write_random_checkpoint(
        tmp_path / "ck", shared_dir / "models" / "scgpt-human", nlayers=2, embsize=16, nhead=2, d_hid=16
    )
    gen, *_ = load_scgpt_generator(
        ck, weights="random", seed=11, overrides={"nlayers": 2, "embsize": 16, "nheads": 2, "d_hid": 16}
    )
    state = state_dict_in_naming(gen, "Wqkv")
    state["cls_decoder.out_layer.weight"] = torch.zeros(1, 16)
    torch.save(state, tmp_path / "tutorial_best_model.pt")
    p = ScGPTPredictor(model=ck, weights_file=tmp_path / "tutorial_best_model.pt", epochs=0, n_pool=6, rng=0)
    p.fit(pdata, _train(pdata), cells=cells)
    assert p.load_report["kind"] == "generator" and p.load_report["n_new"] == 0
    assert p.train_log["loss"] == []
    # the prediction is the reference forward (no training) averaged over the pool
    from scfmkit.tl._perturbation._scgpt_train import make_batch

    tok, _ = p._tokens_of("KLF1+MAP2K6")
    t, v, f, lens, _, _ = make_batch(p.pool, [tok] * p.pool.shape[0], p.gene_tokens, pad_id=p.pad_id, pert_pad_id=0)
    with torch.no_grad():
        direct = gen.eval()(t, v, f, lens)[:, : pdata.n_vars].double().mean(0).numpy()
    np.testing.assert_allclose(p.predict(["KLF1+MAP2K6"]).to_numpy()[0], direct, rtol=1e-6, atol=1e-7)


def test_compact_embedding_is_the_full_vocabulary_update(cells, pdata, shared_dir, fitted, monkeypatch):
    """Training only the used vocabulary rows equals the reference's update of the whole table (unused rows stay)."""
    import torch

    from scfmkit.tl._perturbation import _scgpt_train

    orig = _scgpt_train._CompactEmbedding
    monkeypatch.setattr(
        _scgpt_train,
        "_CompactEmbedding",
        lambda module, used: orig(module, np.arange(module.encoder.embedding.weight.shape[0])),
    )
    full = ScGPTPredictor(**_opts(shared_dir)).fit(pdata, _train(pdata), cells=cells)
    a, b = fitted.module.state_dict(), full.module.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # rows no training token uses are exactly the initial (random) ones
    init = ScGPTPredictor(**_opts(shared_dir, epochs=0)).fit(pdata, _train(pdata), cells=cells)
    w0, w1 = init.module.encoder.embedding.weight, fitted.module.encoder.embedding.weight
    used = np.zeros(w0.shape[0], bool)
    used[np.asarray(fitted.gene_tokens)] = True
    assert torch.equal(w0[~torch.from_numpy(used)][:1000], w1[~torch.from_numpy(used)][:1000])
    assert not torch.equal(w0[torch.from_numpy(used)], w1[torch.from_numpy(used)])
    assert fitted.module.encoder.embedding is not None and type(fitted.module.encoder.embedding).__name__ == "Embedding"
    assert fitted.module.encoder.embedding.weight.shape[0] == w0.shape[0]
