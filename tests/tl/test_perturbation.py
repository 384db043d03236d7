from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scfmkit as fm
from scfmkit.tl._perturbation._linear import _ridge_bilinear


def _cells(seed=0, n=6, n_genes=40, labels=None):
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    labels = labels or ["control", "g1", "g2", "g3", "g4", "g5", "g1+g2", "g3+g4", "g1+g5", "XX"]
    lab = np.repeat(labels, n)
    X = rng.poisson(2, size=(len(lab), n_genes)).astype(np.float32)
    for i in range(1, 6):
        hit = np.array([f"g{i}" in c.split("+") for c in lab])
        X[hit, i] += 25
        X[hit, 10 + i] += 8 * i
    a = ad.AnnData(X)
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.var_names = genes
    a.obs["condition"] = pd.Categorical(lab)
    return a


@pytest.fixture
def pb():
    p = fm.pp.pseudobulk_perturbations(_cells(), n_top_de=5)
    p.obs["split"] = pd.Categorical(
        ["test" if c in {"g1+g2", "g3+g4", "g1+g5", "g5"} else "train" for c in p.obs_names]
    )
    return p


def test_registry():
    assert {"control", "mean", "additive", "linear"} <= set(fm.tl.available_predictors())
    assert "geneformer" not in fm.tl.available_predictors()  # embedding shifts only: fm.tl.geneformer_perturb
    with pytest.raises(ValueError, match="Unknown perturbation predictor"):
        fm.tl.fit_predictor(fm.pp.pseudobulk_perturbations(_cells(), n_top_de=0), "nope", train=[])


def test_control_mean_additive(pb):
    ctrl = pb.var["control_mean"].to_numpy()
    delta = pd.DataFrame(pb.layers["delta"], index=pb.obs_names)
    train = list(pb.obs_names[pb.obs["split"] == "train"])
    p = fm.tl.fit_predictor(pb, "control")
    np.testing.assert_allclose(p.predict(["g1+g2"]).to_numpy()[0], ctrl)
    m = fm.tl.fit_predictor(pb, "mean")
    expected = ctrl + delta.loc[[t for t in train if t != "control"]].mean(0).to_numpy()
    np.testing.assert_allclose(m.predict(["g3+g4"]).to_numpy()[0], expected)
    a = fm.tl.fit_predictor(pb, "additive")
    np.testing.assert_allclose(a.predict(["g1+g2"]).to_numpy()[0], ctrl + delta.loc["g1"] + delta.loc["g2"])
    with pytest.raises(ValueError, match=r"no training single perturbation of \['g5'\]"):
        a.predict(["g1+g5"])


def test_ridge_closed_form():
    rng = np.random.default_rng(0)
    Y, G, P = rng.normal(size=(30, 7)), rng.normal(size=(30, 3)), rng.normal(size=(7, 4))
    W, b = _ridge_bilinear(Y, G, P, 0.1)
    Yc = Y - Y.mean(1, keepdims=True)
    ref = np.linalg.inv(G.T @ G + 0.1 * np.eye(3)) @ G.T @ Yc @ P @ np.linalg.inv(P.T @ P + 0.1 * np.eye(4))
    np.testing.assert_allclose(W, ref, rtol=1e-10)
    np.testing.assert_allclose(b, Y.mean(1))


def test_linear_pca_equals_explicit_embedding(pb):
    from sklearn.decomposition import PCA

    train = list(pb.obs_names[pb.obs["split"] == "train"])
    lin = fm.tl.fit_predictor(pb, "linear", n_components=3, ridge=0.1)
    # G = gene scores of one PCA of the training pseudobulk (genes x conditions, conditions centred)
    scores = PCA(n_components=3, svd_solver="full").fit_transform(np.asarray(pb[train].X).T)
    emb = pd.DataFrame(scores, index=pb.var_names)
    ext = fm.tl.fit_predictor(pb, "linear", gene_embedding=emb, ridge=0.1)
    conds = ["g1+g2", "g5"]  # g5 is measured, so its gene row exists
    np.testing.assert_allclose(lin.predict(conds).to_numpy(), ext.predict(conds).to_numpy(), atol=1e-8)
    # the prediction by hand: control + G W p + b with p the summed rows of the perturbed genes
    X = np.asarray(pb[train].X)
    delta = X - pb.var["control_mean"].to_numpy()
    keep = [i for i, c in enumerate(train) if c != "XX"]  # XX is not a measured gene: left out of the fit
    P = np.vstack([np.zeros(3) if c == "control" else emb.loc[c].to_numpy() for c in np.array(train)[keep]])
    W, b = _ridge_bilinear(delta[keep].T, emb.to_numpy(), P, 0.1)
    p = emb.loc["g1"].to_numpy() + emb.loc["g2"].to_numpy()
    by_hand = pb.var["control_mean"].to_numpy() + emb.to_numpy() @ W @ p + b
    np.testing.assert_allclose(ext.predict(["g1+g2"]).to_numpy()[0], by_hand, atol=1e-10)
    assert "no gene-embedding row" in lin.why_not("XX")


def test_linear_training_embedding(pb):
    lin = fm.tl.fit_predictor(pb, "linear", perturbation_embedding="training", n_components=4)
    pred = lin.predict(["g1+g2", "g3+g4"])
    assert pred.shape == (2, pb.n_vars)
    assert np.isfinite(pred.to_numpy()).all()
    np.testing.assert_allclose(lin._p("g1+g2"), lin._p("g1") + lin._p("g2"))
    assert lin.why_not("g5") is not None  # g5 is a test condition: no training single
    # the strongly induced target gene moves in the right direction
    ctrl = pb.var["control_mean"]
    assert pred.loc["g1+g2", "g1"] > ctrl["g1"]
    assert pred.loc["g3+g4", "g14"] > ctrl["g14"]
    with pytest.raises(ValueError, match="needs `gene_embedding='pca'`"):
        fm.tl.fit_predictor(pb, "linear", perturbation_embedding="training", gene_embedding="foo")


def test_linear_refuses_unmeasured_genes():
    cells = _cells(labels=["control", "A", "B", "A+B"])
    p = fm.pp.pseudobulk_perturbations(cells, n_top_de=0)
    with pytest.raises(ValueError, match="perturbation_embedding='training'"):
        fm.tl.fit_predictor(p, "linear", train=["A", "B"])


def test_linear_with_foundation_model_embeddings(pb):
    from scfmkit.models import FoundationModel

    class Toy(FoundationModel):
        """The smallest complete model: every abstract method of the interface, only token embeddings real."""

        family, name, weights_id, source = "toy", "toy", "random:0", "test"
        hidden_size = n_layers = 6

        def match_genes(self, genes, *, gene_id_type="auto"):
            raise NotImplementedError

        def tokenize(self, adata, **kwargs):
            raise NotImplementedError

        def embed_cells(self, adata, **kwargs):
            raise NotImplementedError

        def embed_genes(self, adata, *, kind="contextual", **kwargs):
            assert kind == "token"
            rng = np.random.default_rng(0)
            table = {f"g{i}": rng.normal(size=6) for i in range(40)}
            out = np.vstack([table.get(g, np.full(6, np.nan)) for g in adata.var_names])
            return out.astype(np.float32), {}

    toy = Toy()
    lin = fm.tl.fit_predictor(pb, "linear", gene_embedding=toy)
    emb, _ = toy.embed_genes(pb, kind="token")
    pb.varm["toy_token"] = emb
    lin2 = fm.tl.fit_predictor(pb, "linear", gene_embedding="toy_token")
    np.testing.assert_allclose(lin.predict(["g1+g2"]).to_numpy(), lin2.predict(["g1+g2"]).to_numpy(), atol=1e-6)
    with pytest.raises(KeyError, match="varm key"):
        fm.tl.fit_predictor(pb, "linear", gene_embedding="nope")


def test_unknown_predictor_lists_the_registry(pb):
    with pytest.raises(ValueError, match="Unknown perturbation predictor 'geneformer'.*geneformer_perturb"):
        fm.tl.fit_predictor(pb, "geneformer")


def test_predict_perturbation_writes_layer(pb):
    before = pb.copy()
    out = fm.tl.predict_perturbation(pb, method="additive", conditions=["g1+g2", "g3+g4"], copy=True)
    assert "pred_additive" not in pb.layers
    assert list(pb.layers) == list(before.layers)
    layer = out.layers["pred_additive"]
    assert np.isnan(layer[out.obs_names.get_loc("g1+g5")]).all()
    assert np.isfinite(layer[out.obs_names.get_loc("g1+g2")]).all()
    assert out.uns["pred_additive"]["params"]["method"] == "additive"
    assert fm.tl.predict_perturbation(pb, method="mean", key_added="m") is None
    assert "m" in pb.layers
    assert np.isnan(pb.layers["m"][pb.obs_names.get_loc("control")]).all()
    with pytest.raises(KeyError, match="not rows"):
        fm.tl.predict_perturbation(pb, method="mean", conditions=["Z+Y"])
    with pytest.raises(ValueError, match="pseudobulk"):
        fm.tl.predict_perturbation(_cells(), method="mean")


def test_predict_bad_input_leaves_caller_untouched(pb):
    before_layers, before_uns = list(pb.layers), list(pb.uns)
    # a perturbed gene that is not measured: the reference linear model has no row for it
    with pytest.raises(ValueError, match=r"cannot predict 1 condition\(s\) \(XX: perturbed gene"):
        fm.tl.predict_perturbation(pb, method="linear", conditions=["XX"], train=["g1", "g2", "g3", "g4"])
    with pytest.raises(ValueError, match="no training single perturbation"):
        fm.tl.predict_perturbation(pb, method="additive", conditions=["g1+g5"])
    with pytest.raises(ValueError, match="Unknown perturbation predictor"):
        fm.tl.predict_perturbation(pb, method="gears")
    assert list(pb.layers) == before_layers
    assert list(pb.uns) == before_uns


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"control": "ctrl"}, "Control label 'ctrl' not found"), ({"split": "loo"}, "method")],
)
def test_benchmark_bad_input(kwargs, match):
    cells = _cells()
    before = cells.copy()
    with pytest.raises(ValueError, match=match):
        fm.tl.benchmark_perturbation(cells, methods=["control", "mean"], seeds=[0], **kwargs)
    assert cells.obs.equals(before.obs)
    np.testing.assert_array_equal(cells.X, before.X)


def test_benchmark_tidy(pb):
    cells = _cells()
    before = cells.copy()
    df = fm.tl.benchmark_perturbation(
        cells,
        methods={"control": {}, "additive": {}, "lin": {"method": "linear", "perturbation_embedding": "training"}},
        split="double",
        seeds=[0, 1],
        evaluate=("test", "holdout"),
        metrics=["pearson_delta", "mse"],
    )
    assert cells.obs.equals(before.obs)
    assert "split" not in cells.obs
    assert list(df.columns) == ["method", "seed", "condition", "metric", "value"]
    assert set(df["method"]) == {"control", "additive", "lin", "replicate"}  # + the split-half ceiling
    assert set(df["seed"]) == {0, 1}
    per = df.groupby(["seed", "method"])["condition"].apply(frozenset).unstack()
    assert all(len(set(row)) == 1 for _, row in per.iterrows())  # same conditions for every method
    assert set(df["condition"]) <= {"g1+g2", "g3+g4", "g1+g5"}
    assert set(df.attrs["fit_seconds"]) == {"control", "additive", "lin"}
    assert df.loc[df["method"] == "control", "value"].notna().any()


def test_benchmark_norman_subset(shared_dir):
    full = ad.read_h5ad(shared_dir / "data" / "norman2019_perturbench_subset.h5ad")
    cells = full[full.obs["dataset"] == "norman19"]
    keep = ["control", "KLF1", "MAP2K6", "TGFBR2", "MAP2K3", "SLC38A2", "MAPK1"]
    keep += ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2"]
    cells = cells[cells.obs["condition"].isin(keep).to_numpy()].copy()
    df = fm.tl.benchmark_perturbation(
        cells,
        methods={"mean": {}, "additive": {}, "linear": {"method": "linear", "perturbation_embedding": "training"}},
        split="double",
        seeds=[0],
        evaluate=("test", "holdout"),
    )
    res = df[df["metric"] == "pearson_delta"].groupby("method")["value"].mean()
    assert res["additive"] > res["mean"]  # the published finding on Norman doubles
    assert res["linear"] > res["mean"]


# ---------------------------------------------------------------- Geneformer in-silico perturbation
from scfmkit.tl._perturbation._isp import _null_targets  # noqa: E402
from scfmkit.tl._perturbation._isp_compare import perturb_pair  # noqa: E402


def _pair(cell, targets, **kw):
    p = perturb_pair(np.asarray(cell), targets, **kw)
    return (
        None if p is None else (p.perturbed.tolist(), p.original.tolist(), p.pert_keep.tolist(), p.orig_keep.tolist())
    )


def test_perturb_pair_kernel():
    cell = np.array([2, 10, 11, 12, 13, 3])  # V2 layout: <cls> genes <eos>
    # delete: the remaining genes of the original are compared, in order, with the perturbed cell's genes
    assert _pair(cell, [12], mode="delete", skip=1, max_len=12) == (
        [2, 10, 11, 13, 3],
        cell.tolist(),
        [1, 2, 3],
        [1, 2, 4],
    )
    assert _pair(cell, [99], mode="delete", skip=1, max_len=12) is None
    assert _pair(cell, [12, 99], mode="delete", skip=1, max_len=12) is None  # needs every gene
    # overexpress: to the front after <cls>; the moved gene is compared in neither embedding
    assert _pair(cell, [12], mode="overexpress", skip=1, max_len=12) == (
        [2, 12, 10, 11, 13, 3],
        cell.tolist(),
        [2, 3, 4],
        [1, 2, 4],
    )
    # inserted when absent; the overflow (13) is cut from the perturbed cell and from the original (<eos> kept)
    assert _pair(cell, [99], mode="overexpress", skip=1, max_len=6) == (
        [2, 99, 10, 11, 12, 3],
        [2, 10, 11, 12, 3],
        [2, 3, 4],
        [1, 2, 3],
    )
    assert _pair(cell[1:-1], [13], mode="overexpress", skip=0, max_len=10) == (
        [13, 10, 11, 12],
        [10, 11, 12, 13],
        [1, 2, 3],
        [0, 1, 2],
    )


def test_null_targets_matched_rank():
    gen = np.random.default_rng(0)
    cell = np.arange(100, 140)
    for _ in range(20):
        (stand_in,) = _null_targets(cell, [120], skip=0, window=3, pool=np.arange(100, 200), gen=gen)
        assert stand_in != 120
        assert abs(int(np.flatnonzero(cell == stand_in)[0]) - 20) <= 3
    (absent,) = _null_targets(cell, [500], skip=0, window=3, pool=np.arange(100, 200), gen=gen)
    assert 140 <= absent < 200  # a gene the cell does not express


@pytest.fixture(scope="module")
def tiny_gf(shared_dir, tmp_path_factory):
    from scfmkit.models.geneformer import write_random_checkpoint

    path = write_random_checkpoint(
        tmp_path_factory.mktemp("gf") / "v1",
        shared_dir / "models" / "geneformer-v1",
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
    )
    return fm.models.load(path)


@pytest.fixture(scope="module")
def gf_cells(shared_dir):
    full = ad.read_h5ad(shared_dir / "data" / "celltypist_sample_counts_559cells.h5ad")
    cells = full[:24].copy()
    detected = np.asarray((cells.X > 0).sum(0)).ravel()
    keep = np.sort(np.argsort(-detected, kind="stable")[:200])  # short cells keep the forward passes cheap
    cells = cells[:, keep].copy()
    cells.obs["state"] = np.where(np.arange(cells.n_obs) < 12, "A", "B")
    return cells


def test_geneformer_perturb_delete_by_hand(tiny_gf, gf_cells):
    cells = gf_cells.copy()
    gene = str(cells.var_names[0])
    before = cells.copy()
    out = fm.tl.geneformer_perturb(cells, tiny_gf, genes=gene, mode="delete", n_null=3, rng=0, copy=True)
    assert list(cells.obs.columns) == list(before.obs.columns)  # copy=True leaves the input alone
    expressing = np.asarray(cells[:, gene].X.toarray()).ravel() > 0
    cos = out.obs["geneformer_perturb_cos"].to_numpy()
    assert np.isnan(cos[~expressing]).all()
    assert np.isfinite(cos[expressing]).all()
    assert (cos[expressing] <= 1 + 1e-6).all()
    # by hand for one cell: the perturbed embedding is the plain embedding of its tokens without the gene; the
    # original is compared on the other genes only (hidden states of the full cell, deleted position left out)
    import torch

    from scfmkit.models._rank_tokenize import TokenizedCells

    tokens, _ = tiny_gf.tokenize(cells)
    tok = int(tiny_gf.match_genes([gene]).token_ids[0])
    i = int(np.flatnonzero(expressing)[0])
    cell = tokens[i][tokens[i] != tok]
    emb = tiny_gf.embed_tokens(TokenizedCells(cell, np.array([0, len(cell)])))
    np.testing.assert_allclose(out.obsm["X_geneformer_perturb"][i], emb[0], rtol=1e-4, atol=1e-5)
    enc = tiny_gf.encoder(tiny_gf.n_layers - 1, "cpu")  # emb_layer=-1: second-to-last layer
    with torch.inference_mode():
        hidden = enc(torch.from_numpy(tokens[i][None].astype(np.int64)), torch.tensor([len(tokens[i])]))[0].numpy()
    with torch.inference_mode():
        pert_hidden = enc(torch.from_numpy(cell[None].astype(np.int64)), torch.tensor([len(cell)]))[0].numpy()
    orig = hidden[tokens[i] != tok]
    # the reference's cell value: the mean over the other genes of each gene's cosine (original vs perturbed)
    gene_cos = (orig * pert_hidden).sum(1) / np.linalg.norm(orig, axis=1) / np.linalg.norm(pert_hidden, axis=1)
    assert cos[i] == pytest.approx(gene_cos.mean(), rel=1e-4)
    pooled = fm.tl.geneformer_perturb(cells, tiny_gf, genes=gene, n_null=0, comparison="pooled", copy=True)
    o, p = orig.mean(0), pert_hidden.mean(0)
    expected = o @ p / np.linalg.norm(o) / np.linalg.norm(p)
    assert pooled.obs["geneformer_perturb_cos"].iloc[i] == pytest.approx(expected, rel=1e-4)
    summary = out.uns["geneformer_perturb"]["summary"]
    assert summary["n_cells_perturbed"] == expressing.sum()
    assert 0 < summary["p_shift"] <= 1
    assert out.uns["geneformer_perturb"]["params"]["expression_predictions"] is False


def test_geneformer_perturb_overexpress_goal(tiny_gf, gf_cells):
    cells = gf_cells.copy()
    genes = [str(cells.var_names[1]), str(cells.var_names[2])]
    fm.tl.geneformer_perturb(
        cells, tiny_gf, genes=genes, mode="overexpress", goal_key="state", goal="B", n_null=2, rng=1, key_added="oe"
    )
    start = cells.obs["state"] == "A"
    assert cells.obs.loc[start, "oe_goal_shift"].notna().all()  # overexpression perturbs every start cell
    assert cells.obs.loc[~start, "oe_goal_shift"].isna().all()
    assert "mean_goal_shift" in cells.uns["oe"]["summary"]


def test_geneformer_perturb_goal_with_missing_states(tiny_gf, gf_cells):
    # cells without a state (NaN) are neither goal nor start, on pandas 2 ("nan" under astype(str)) and 3 alike
    cells = gf_cells.copy()
    state = cells.obs["state"].astype(object)
    state.iloc[:3] = np.nan
    cells.obs["state"] = state
    genes = [str(cells.var_names[1])]
    fm.tl.geneformer_perturb(
        cells, tiny_gf, genes=genes, mode="overexpress", goal_key="state", goal="B", n_null=0, rng=1, key_added="oe"
    )
    start = (cells.obs["state"] == "A").to_numpy()
    assert cells.obs.loc[start, "oe_goal_shift"].notna().all()
    assert cells.obs.loc[~start, "oe_goal_shift"].isna().all()
    assert cells.obs["state"].isna().sum() == 3  # the caller's column untouched


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"genes": "NOT_A_GENE_XYZ"}, ValueError, "not in geneformer-v1's dictionaries"),
        ({"genes": "x", "mode": "knockdown"}, ValueError, "mode"),
        ({"genes": "x", "goal_key": "state"}, ValueError, "both"),
        ({"genes": "x", "goal_key": "nope", "goal": "B"}, KeyError, "not an obs column"),
        ({"genes": "x", "comparison": "cells"}, ValueError, "comparison"),
    ],
)
def test_geneformer_perturb_bad_input(tiny_gf, gf_cells, kwargs, err, match):
    cells = gf_cells.copy()
    before = cells.obs.copy()
    with pytest.raises(err, match=match):
        fm.tl.geneformer_perturb(cells, tiny_gf, **kwargs)
    pd.testing.assert_frame_equal(cells.obs, before)


def test_linear_with_geneformer_token_embeddings(shared_dir, tiny_gf):
    """The "pretrained embeddings in a linear model" variant with real vocabularies (Papalexi, random weights)."""
    full = ad.read_h5ad(shared_dir / "data" / "papalexi2021_eccite_lowmoi.h5ad")
    keep = ["non-targeting", "STAT1", "STAT2", "STAT3", "JAK2", "IFNGR2", "CMTM6", "IRF1"]
    cells = full[full.obs["target"].isin(keep).to_numpy()].copy()
    pb = fm.pp.pseudobulk_perturbations(cells, perturbation_key="target", control="non-targeting", n_top_de=0)
    fm.tl.embed_genes(pb, tiny_gf, kind="token")
    assert "geneformer_token" in pb.varm
    train = ["STAT1", "STAT2", "JAK2", "IFNGR2"]  # measured targets: both embeddings have their rows
    by_key = fm.tl.fit_predictor(pb, "linear", train=train, gene_embedding="geneformer_token")
    by_model = fm.tl.fit_predictor(pb, "linear", train=train, gene_embedding=tiny_gf)
    pred = by_key.predict(["STAT3", "CMTM6"])
    np.testing.assert_allclose(pred.to_numpy(), by_model.predict(["STAT3", "CMTM6"]).to_numpy(), rtol=1e-6)
    # IRF1 is not a measured gene: only the model object (vocabulary lookup) gives it a perturbation embedding
    assert by_key.why_not("IRF1") is not None
    assert by_model.why_not("IRF1") is None
