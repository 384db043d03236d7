"""Gene dependency maps: kernels against brute-force forward passes, the wrapper's keys, baselines and errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scfmkit as fm

torch = pytest.importorskip("torch")

GF_TINY = {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "seed": 0}


@pytest.fixture(scope="module")
def gf_dir(shared_dir, tmp_path_factory):
    from scfmkit.models.geneformer import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("dep") / "gf", shared_dir / "models" / "geneformer-v1", **GF_TINY
    )


@pytest.fixture(scope="module")
def gf2_dir(shared_dir, tmp_path_factory):
    from scfmkit.models.geneformer import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("dep") / "gf2", shared_dir / "models" / "geneformer-v2-gc95M", **GF_TINY
    )


@pytest.fixture(scope="module")
def sg_dir(shared_dir, tmp_path_factory):
    from scfmkit.models.scgpt import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("dep") / "sg", shared_dir / "models" / "scgpt-human", nlayers=2, embsize=16, nhead=2
    )


@pytest.fixture(scope="module")
def cells(shared_dir):
    a = ad.read_h5ad(shared_dir / "data" / "papalexi2021_eccite_lowmoi.h5ad")
    a = a[:: a.n_obs // 30][:30, :60].copy()  # 30 cells, 60 genes
    keep = np.asarray((a.X > 0).sum(1)).ravel() > 0
    return a[keep].copy()


def _gf(gf_dir):
    return fm.models.load(str(gf_dir), weights="random", seed=0)


def _brute_geneformer(model, cell, source, *, mode, emb_layer=-1):
    """Per target token: (1 - cos, log-odds change) from two plain forward passes of one cell."""
    from scfmkit.tl._perturbation._isp_compare import perturb_pair

    skip = 1 if model.vocab.special_tokens else 0
    pert = perturb_pair(cell, [source], mode=mode, skip=skip, max_len=model.input_size).perturbed
    enc = model.encoder(model.n_layers, "cpu", mlm_head=True)
    with torch.inference_mode():
        o = enc(
            torch.from_numpy(cell[None].astype(np.int64)), return_layers=(model.n_layers + emb_layer, model.n_layers)
        )
        p = enc(
            torch.from_numpy(pert[None].astype(np.int64)), return_layers=(model.n_layers + emb_layer, model.n_layers)
        )
        lo_o = torch.log_softmax(enc.mlm(o[model.n_layers][0]).double(), -1)
        lo_p = torch.log_softmax(enc.mlm(p[model.n_layers][0]).double(), -1)
    out = {}
    body = list(cell[skip : len(cell) - skip])
    pbody = list(pert[skip : len(pert) - skip])
    for t in set(body) & set(pbody) - {source}:
        if mode == "overexpress" and pbody.index(t) == 0:
            continue
        i, j = skip + body.index(t), skip + pbody.index(t)
        a, b = o[model.n_layers + emb_layer][0, i].double(), p[model.n_layers + emb_layer][0, j].double()
        cos = float(a @ b / (a.norm() * b.norm()))

        def odds(lp):
            return float(lp - torch.log(-torch.expm1(lp)))

        out[int(t)] = (1 - cos, odds(lo_p[j, t]) - odds(lo_o[i, t]))
    return out


@pytest.mark.parametrize("mode", ["delete", "overexpress"])
def test_geneformer_kernel_matches_brute_force(gf_dir, cells, mode):
    from scfmkit.tl._dependency_kernels import geneformer_dependency_sums

    model = _gf(gf_dir)
    tokens, _ = model.tokenize(cells)
    src = int(tokens[0][3])  # a gene the first cell expresses
    absent = next(int(t) for t in model.match_adata(cells).token_ids if t not in set(tokens[0].tolist()))
    targets = np.unique(np.concatenate([tokens[0], tokens[1]]))
    res = geneformer_dependency_sums(
        model, tokens, np.array([src, absent]), targets, mode=mode, batch_size=4, device="cpu"
    )
    one = fm.models.TokenizedCells.from_lists([tokens[0]])
    res0 = geneformer_dependency_sums(model, one, np.array([src]), targets, mode=mode, batch_size=1, device="cpu")
    brute = _brute_geneformer(model, np.asarray(tokens[0]), src, mode=mode)
    col = {int(t): c for c, t in enumerate(targets)}
    assert res0.counts[0].sum() == len(brute)
    for t, (shift, dlo) in brute.items():
        assert res0.counts[0, col[t]] == 1
        np.testing.assert_allclose(res0.sums["embedding"][0, col[t]], shift, atol=2e-5)
        np.testing.assert_allclose(res0.sums["logodds"][0, col[t]], dlo, atol=2e-3)
    # the batched run over all cells: deletion only perturbs the cells that express the source
    for k, s in enumerate((src, absent)):
        expressing = sum(s in set(tokens[i].tolist()) for i in range(len(tokens)))
        assert res.n_cells[k] == (expressing if mode == "delete" else len(tokens))


def test_geneformer_v2_keeps_special_tokens(gf2_dir, cells):
    from scfmkit.tl._dependency_kernels import geneformer_dependency_sums

    model = fm.models.load(str(gf2_dir), weights="random", seed=0)
    tokens, _ = model.tokenize(cells[:3])
    src = int(tokens[0][2])
    one = fm.models.TokenizedCells.from_lists([tokens[0]])
    targets = np.unique(tokens[0])
    res = geneformer_dependency_sums(model, one, np.array([src]), targets, scores=("embedding",), device="cpu")
    brute = _brute_geneformer(model, np.asarray(tokens[0]), src, mode="delete")
    col = {int(t): c for c, t in enumerate(targets)}
    for t, (shift, _) in brute.items():
        np.testing.assert_allclose(res.sums["embedding"][0, col[t]], shift, atol=2e-5)
    special = {model.vocab.token_dict["<cls>"], model.vocab.token_dict["<eos>"]}
    assert all(res.counts[0, col[t]] == 0 for t in special if t in col)


def test_geneformer_batches_do_not_change_the_map(gf_dir, cells):
    from scfmkit.tl._dependency_kernels import geneformer_dependency_sums

    model = _gf(gf_dir)
    tokens, _ = model.tokenize(cells)
    srcs = np.array([int(tokens[0][0]), int(tokens[1][1])])
    targets = model.match_adata(cells).token_ids
    kw = {"scores": ("embedding",), "attention_layer": 2, "device": "cpu"}
    a = geneformer_dependency_sums(model, tokens, srcs, targets, batch_size=1, **kw)
    b = geneformer_dependency_sums(model, tokens, srcs, targets, batch_size=16, **kw)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.sums["embedding"], b.sums["embedding"], atol=1e-4)
    np.testing.assert_allclose(a.attention_sums, b.attention_sums, atol=1e-5)
    assert b.n_forward < a.n_forward


def test_scgpt_kernel_matches_brute_force(sg_dir, cells):
    from scfmkit.tl._dependency_kernels import scgpt_dependency_sums

    model = fm.models.load(str(sg_dir))
    toks, _ = model.tokenize(cells[:4])
    cell, vals = np.asarray(toks[0], np.int64), np.asarray(toks.values_of(0), np.float32)
    src = int(cell[2])
    one = fm.models.TokenizedCells.from_lists([cell], values=[vals])
    targets = np.unique(cell[1:])
    for value, new in (("zero", 0.0), ("top", model.n_bins - 1.0)):
        res = scgpt_dependency_sums(model, one, np.array([src]), targets, value=value, device="cpu")
        v2 = vals.copy()
        v2[2] = new
        n = torch.tensor([len(cell)])
        with torch.inference_mode():
            ho = model.module(torch.from_numpy(cell[None]), torch.from_numpy(vals[None]), n, cls_only=False)[0]
            hp = model.module(torch.from_numpy(cell[None]), torch.from_numpy(v2[None]), n, cls_only=False)[0]
            po, pp = model.expr_decoder(ho)["pred"], model.expr_decoder(hp)["pred"]
        col = {int(t): c for c, t in enumerate(targets)}
        for pos in range(1, len(cell)):
            c = col[int(cell[pos])]
            if pos == 2:
                assert res.counts[0, c] == 0
                continue
            cos = torch.nn.functional.cosine_similarity(ho[pos], hp[pos], dim=0)
            np.testing.assert_allclose(res.sums["embedding"][0, c], 1 - float(cos), atol=1e-5)
            np.testing.assert_allclose(res.sums["expression"][0, c], float(pp[pos] - po[pos]), atol=1e-5)


def test_scgpt_attention_matches_forward(sg_dir, cells):
    """The attention weights of the last layer reproduce the layer's own attention output."""
    model = fm.models.load(str(sg_dir))
    toks, _ = model.tokenize(cells[:2])
    cell = torch.from_numpy(np.asarray(toks[0], np.int64))[None]
    vals = torch.from_numpy(np.asarray(toks.values_of(0), np.float32))[None]
    n = torch.tensor([cell.shape[1]])
    m = model.module
    with torch.inference_mode():
        a = m.attention(cell, vals, n, layer=1)
        x = m.encoder(cell) + m.value_encoder(vals)
        att = m.transformer_encoder.layers[0].self_attn
        d = x.shape[-1]
        v = torch.nn.functional.linear(x, att.in_proj_weight[2 * d :], att.in_proj_bias[2 * d :])
        v = v.view(1, -1, att.nhead, d // att.nhead).transpose(1, 2)
        ours = att.out_proj((a @ v).transpose(1, 2).reshape(1, -1, d))
        ref = att(x, None)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(a.sum(-1).numpy(), 1, atol=1e-5)


def test_spearman_columns_matches_scipy():
    from scipy.stats import spearmanr

    from scfmkit.tl._dependency_kernels import spearman_columns

    rng = np.random.default_rng(0)
    X = rng.poisson(1, size=(40, 6)).astype(float)
    X[:, 5] = 3  # constant -> NaN
    rho = spearman_columns(X, np.array([0, 2]))
    ref = spearmanr(X[:, :5]).statistic
    np.testing.assert_allclose(rho[:, :5], ref[[0, 2]], atol=1e-12)
    assert np.isnan(rho[:, 5]).all()


def test_gene_dependency_wrapper(gf_dir, cells, tmp_path):
    a = cells.copy()
    before = a.X.copy()
    table = fm.tl.gene_dependency(
        a, str(gf_dir), weights="random", n_genes=2, scores=("embedding",), batch_size=8, n_top=5
    )
    key = "geneformer_dependency"
    for k in ("", "_coexpression", "_random", "_attention", "_n_cells"):
        assert a.varp[key + k].shape == (a.n_vars, a.n_vars)
    assert f"{key}_logodds" not in a.varp
    info = a.uns[key]
    assert len(info["sources"]) == 2 and info["params"]["random_weights"] == "random:1"
    assert info["params"]["weights_note"] == "random-weight control"
    src = a.var_names.get_indexer(info["sources"])
    M = a.varp[key]
    assert np.isnan(M[src, src]).all()
    others = np.setdiff1d(np.arange(a.n_vars), src)
    assert np.isnan(M[others]).all()
    assert (a.varp[f"{key}_n_cells"][src] > 0).any()
    assert np.nanmin(M) >= -1e-6  # 1 - cos
    assert list(table.columns) == ["source", "target", "score", "attention", "random", "coexpression", "n_cells"]
    assert len(table) <= 10 and set(table["source"]) == set(info["sources"])
    # the attention rows are means of probabilities
    att = a.varp[f"{key}_attention"][src]
    assert np.nanmax(att) <= 1 and np.nanmin(att) >= 0
    np.testing.assert_array_equal(
        a.X.toarray() if hasattr(a.X, "toarray") else a.X, before.toarray() if hasattr(before, "toarray") else before
    )
    a.write_h5ad(tmp_path / "dep.h5ad")  # every key h5ad-writable
    b = cells.copy()
    only = fm.tl.gene_dependency(
        b, str(gf_dir), weights="random", genes=info["sources"][:1], scores=(), baselines=(), inplace=False, n_top=5
    )
    assert not b.varp and not b.uns and len(only) == 5
    np.testing.assert_allclose(only["score"], table[table["source"] == info["sources"][0]]["score"], atol=1e-6)


def test_gene_dependency_scgpt_and_predictor(sg_dir, cells):
    a = cells.copy()
    genes = list(a.var_names[:3])
    pb_cells = a.copy()
    pb_cells.obs["condition"] = ["control" if i % 4 == 0 else genes[i % 3] for i in range(a.n_obs)]
    pb = fm.pp.pseudobulk_perturbations(pb_cells, n_top_de=3)
    # two folds: each source is predicted by the fold that did not train on it
    fold_a = fm.tl.fit_predictor(pb, method="linear", n_components=2, train=["control", genes[1], genes[2]])
    fold_b = fm.tl.fit_predictor(pb, method="linear", n_components=2, train=["control", genes[0], genes[2]])
    table = fm.tl.gene_dependency(
        a, str(sg_dir), genes=genes, weights="random", baselines=("coexpression",), predictor=[fold_b, fold_a]
    )
    key = "scgpt_dependency"
    assert {key, f"{key}_embedding", f"{key}_coexpression", f"{key}_linear"} <= set(a.varp)
    src = a.var_names.get_indexer(genes)
    lin = a.varp[f"{key}_linear"][src]
    for r, fold in ((0, fold_a), (1, fold_b)):
        implied = fold.predict([genes[r]]).to_numpy()[0] - fold.ctrl
        ok = np.arange(a.n_vars) != src[r]
        np.testing.assert_allclose(lin[r, ok], implied[ok], rtol=1e-5, atol=1e-6)
    assert np.isnan(lin[2]).all()  # both folds trained on genes[2]
    assert "linear" in table.columns


def test_gene_dependency_errors_leave_data_untouched(gf_dir, sg_dir, cells):
    a = cells.copy()
    with pytest.raises(ValueError, match="not in adata"):
        fm.tl.gene_dependency(a, str(gf_dir), weights="random", genes=["NOPE"])
    with pytest.raises(ValueError, match="perturbation"):
        fm.tl.gene_dependency(a, str(gf_dir), weights="random", perturbation="knockout")
    with pytest.raises(ValueError, match="score"):
        fm.tl.gene_dependency(a, str(sg_dir), weights="random", score="logodds")
    with pytest.raises(ValueError, match="baselines"):
        fm.tl.gene_dependency(a, str(gf_dir), weights="random", baselines=("pca",))
    assert not a.varp and not a.uns


def test_gene_dependency_needs_the_capability(cells):
    from scfmkit.models import FoundationModel

    class NoDep(FoundationModel):
        family = "toy"
        name = "toy"
        weights_id = "random:0"
        source = "toy"
        hidden_size = 1
        n_layers = 1

        def match_genes(self, genes, *, gene_id_type="auto"):  # pragma: no cover
            raise NotImplementedError

        def tokenize(self, adata, **kw):  # pragma: no cover
            raise NotImplementedError

        def embed_cells(self, adata, **kw):  # pragma: no cover
            raise NotImplementedError

        def embed_genes(self, adata, **kw):  # pragma: no cover
            raise NotImplementedError

    with pytest.raises(TypeError, match="gene_dependency"):
        fm.tl.gene_dependency(cells.copy(), NoDep())


def test_implied_effects_nan_for_unknown_sources():
    from scfmkit.tl._dependency_kernels import implied_effects

    class P:
        var_names = pd.Index(["a", "b"])
        ctrl = np.array([1.0, 2.0])
        train_genes = [(), ("b",)]

        def why_not(self, s):
            return None if s == "a" else "no"

        def predict(self, conds):
            return pd.DataFrame([[2.0, 2.5]] * len(conds), columns=self.var_names)

    out = implied_effects(P(), ["a", "z"], ["b", "c", "a"])
    np.testing.assert_allclose(out[0], [0.5, np.nan, 1.0])
    assert np.isnan(out[1]).all()


def test_geneformer_gene_shift_matches_reference_isp(gf2_dir, shared_dir, golden_dir):
    """1 - cos of each gene equals the reference InSilicoPerturber's gene cosine similarities (delete, V2)."""
    from scfmkit.tl._dependency_kernels import geneformer_dependency_sums

    gold = np.load(golden_dir / "geneformer_isp_gene_shift.npz")
    model = fm.models.load(str(gf2_dir))
    a = ad.read_h5ad(shared_dir / "data" / "celltypist_sample_counts_559cells.h5ad")[:16].copy()
    tokens, _ = model.tokenize(a)
    np.testing.assert_array_equal(tokens.input_ids, gold["input_ids"])  # the same input as the reference's
    special = {model.vocab.token_dict["<cls>"], model.vocab.token_dict["<eos>"]}
    genes = np.array([t not in special for t in gold["affected"]])
    targets = gold["affected"][genes]
    res = geneformer_dependency_sums(
        model, tokens, np.array([int(gold["source"])]), targets, scores=("embedding",), batch_size=4, device="cpu"
    )
    np.testing.assert_array_equal(res.counts[0], gold["n_cells"][genes])
    np.testing.assert_allclose(res.means()["embedding"][0], 1 - gold["mean_cos"][genes], atol=1e-5)
