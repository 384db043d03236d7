from __future__ import annotations

import json
import logging
import shutil

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

import scfmkit as fm
from scfmkit.models._scgpt_preprocess import bin_values, cell_generators, tokenize_cells
from scfmkit.models.scgpt import ScGPTModel, load_scgpt, write_random_checkpoint

# the configuration of the golden files (tests/data/golden/README_scgpt.md)
GOLDEN_CFG = {"seed": 0, "nlayers": 2, "embsize": 64, "nhead": 4, "d_hid": 64}


@pytest.fixture(scope="module")
def scgpt_model_dir(shared_dir):
    return shared_dir / "models" / "scgpt-human"


@pytest.fixture(scope="module")
def ckpt(scgpt_model_dir, tmp_path_factory):
    """Tiny random checkpoint in the released layout (in_proj naming, real vocabulary)."""
    return write_random_checkpoint(tmp_path_factory.mktemp("scgpt") / "inproj", scgpt_model_dir, **GOLDEN_CFG)


@pytest.fixture(scope="module")
def ckpt_wqkv(scgpt_model_dir, tmp_path_factory):
    return write_random_checkpoint(
        tmp_path_factory.mktemp("scgpt") / "wqkv", scgpt_model_dir, naming="Wqkv", **GOLDEN_CFG
    )


@pytest.fixture(scope="module")
def model(ckpt) -> ScGPTModel:
    return load_scgpt(ckpt, device="cpu")


@pytest.fixture(scope="module")
def kang(shared_dir):
    return ad.read_h5ad(shared_dir / "data" / "kang2018_ifnb_counts.h5ad")


@pytest.fixture
def cells(kang):
    return kang[:40].copy()


def _csr(z):
    return sparse.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))


# ---------------------------------------------------------------- kernels
def test_bin_values_by_hand():
    # 5 distinct non-zero values, 3 bins -> 2 edges at min and max: all but the maximum -> 1, maximum -> 2
    row = np.array([0.0, 5.0, 1.0, 0.0, 3.0, 2.0, 4.0], dtype=np.float32)
    out = bin_values(row, 3, np.random.default_rng(0))
    assert out.tolist() == [0, 2, 1, 0, 1, 1, 1]
    # n_bins=51: distinct values get bins 1..50, the maximum 50, the minimum 1
    row = np.arange(1, 101, dtype=np.float32)
    out = bin_values(row, 51, np.random.default_rng(0))
    assert out.min() == 1
    assert out.max() == 50
    assert (np.diff(out) >= 0).all()
    assert bin_values(np.zeros(4), 51, np.random.default_rng(0)).tolist() == [0, 0, 0, 0]


def test_binning_matches_reference_golden(golden_dir):
    z = np.load(golden_dir / "scgpt_binning.npz")
    rows = _csr(z).toarray()
    ours = np.stack([bin_values(r, 51, np.random.default_rng(i)) for i, r in enumerate(rows)])
    np.testing.assert_array_equal(ours, z["bins"].astype(np.int64))


def test_binning_ties_use_rng_reproducibly():
    row = np.array([1, 1, 1, 1, 1, 1, 2, 3, 1, 1, 5], dtype=np.float32)
    a = bin_values(row, 51, np.random.default_rng(3))
    b = bin_values(row, 51, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    # tied ones are spread over the bins their edges span, never above the bins of larger values
    assert a[row == 1].max() < a[row == 2].min() < a[row == 3].min() < a[row == 5].min()
    assert np.unique(a[row == 1]).size > 1


def test_tokenize_cells_cls_first_and_subsampling():
    X = sparse.csr_matrix(np.array([[0, 3, 1, 0, 2, 7], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=np.float32))
    gene_ids = np.array([10, 11, 12, 13, 14, 15])
    rngs = cell_generators(0, ["a", "b", "c"])
    tok, val, cols, n = tokenize_cells(X, gene_ids, cls_id=99, pad_value=-2, n_bins=51, max_length=3, rngs=rngs)
    assert n.tolist() == [4, 0, 1]
    assert tok[0][0] == 99
    assert val[0][0] == -2
    assert tok[0].size == 3
    assert set(tok[0][1:]) <= {11, 12, 14, 15}
    assert cols[0].tolist() == sorted(cols[0].tolist())
    assert tok[1].tolist() == [99]
    assert tok[2].tolist() == [99, 10]


# ---------------------------------------------------------------- model parity
@pytest.mark.parametrize(("which", "key"), [("ckpt", "cls"), ("ckpt_wqkv", "cls_wqkv")])
def test_forward_matches_reference_encode(request, golden_dir, which, key):
    import torch

    m = load_scgpt(request.getfixturevalue(which), device="cpu")
    z = np.load(golden_dir / "scgpt_forward.npz")
    args = (
        torch.from_numpy(z["tokens"].astype(np.int64)),
        torch.from_numpy(z["values"]),
        torch.from_numpy(z["lengths"]),
    )
    with torch.inference_mode():
        cls = m.module(*args).numpy()
        full = m.module(*args, cls_only=False)[:, 0].numpy()
    np.testing.assert_allclose(cls, z[key], atol=1e-5, rtol=0)
    np.testing.assert_allclose(full, z[key], atol=1e-5, rtol=0)


def test_embed_matches_reference_embed_data(model, golden_dir):
    z = np.load(golden_dir / "scgpt_embed_data.npz")
    a = ad.AnnData(_csr(z))
    a.var_names = z["genes"]
    a.obs_names = z["obs_names"]
    emb, params = model.embed_cells(a, batch_size=5)
    np.testing.assert_allclose(emb, z["emb"], atol=1e-5, rtol=0)
    assert params["n_cells_subsampled"] == 0


def test_namings_load_to_identical_outputs(model, ckpt_wqkv, cells):
    other = load_scgpt(ckpt_wqkv, device="cpu")
    np.testing.assert_array_equal(model.embed_cells(cells)[0], other.embed_cells(cells)[0])


def test_wrapped_flash_names_ddp_prefix_and_safetensors(model, ckpt_wqkv, cells, tmp_path):
    import torch
    from safetensors.torch import save_file

    state = torch.load(ckpt_wqkv / "best_model.pt", weights_only=True)
    wrapped = {"module." + k.replace("self_attn.", "self_attn._impl."): v for k, v in state.items()}
    d = tmp_path / "st"
    d.mkdir()
    for f in ("args.json", "vocab.json"):
        shutil.copy(ckpt_wqkv / f, d / f)
    save_file(wrapped, str(d / "model.safetensors"))
    m = load_scgpt(d, device="cpu")
    assert m.weights_id.startswith("sha256:")
    np.testing.assert_array_equal(m.embed_cells(cells)[0], model.embed_cells(cells)[0])


# ---------------------------------------------------------------- determinism and input invariance
def test_same_rng_same_embeddings_any_batching(model, kang):
    a = kang[:30].copy()
    ref, params = model.embed_cells(a, batch_size=30, rng=7)
    assert params["rng_seed"] == 7
    for bs in (1, 7):
        np.testing.assert_allclose(model.embed_cells(a, batch_size=bs, rng=7)[0], ref, atol=1e-6, rtol=0)
    # other batch composition: reversed order and a subset keep each cell's embedding
    rev = model.embed_cells(a[::-1].copy(), batch_size=9, rng=7)[0]
    np.testing.assert_allclose(rev[::-1], ref, atol=1e-6, rtol=0)
    sub = np.arange(0, 30, 3)
    np.testing.assert_allclose(model.embed_cells(a[sub].copy(), batch_size=4, rng=7)[0], ref[sub], atol=1e-6, rtol=0)
    # the model input itself is identical, bit for bit
    t1, t2 = model.tokenize(a, rng=7)[0], model.tokenize(a[sub].copy(), rng=7)[0]
    for j, i in enumerate(sub):
        np.testing.assert_array_equal(t1[i], t2[j])
        np.testing.assert_array_equal(t1.values_of(i), t2.values_of(j))
    # count data has ties: another seed gives other bins
    assert not np.allclose(model.embed_cells(a, rng=8)[0], ref)


def test_backed_h5ad_streams_in_chunks(model, kang, tmp_path):
    a = kang[:25].copy()
    path = tmp_path / "cells.h5ad"
    a.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    emb, params = model.embed_cells(a, batch_size=4, rng=3)
    emb_b, params_b = model.embed_cells(backed, batch_size=4, rng=3, chunk_size=7)
    np.testing.assert_allclose(emb_b, emb, atol=1e-6, rtol=0)
    assert params_b == params
    tok, tok_b = model.tokenize(a, rng=3)[0], model.tokenize(backed, rng=3, chunk_size=6)[0]
    for key in ("input_ids", "offsets", "values", "columns", "n_genes"):
        np.testing.assert_array_equal(getattr(tok, key), getattr(tok_b, key))
    genes = model.embed_genes(a, batch_size=5)[0]
    genes_b = model.embed_genes(backed, batch_size=5, chunk_size=10)[0]
    np.testing.assert_allclose(genes_b, genes, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="chunk_size"):
        model.embed_cells(backed, chunk_size=0)


def test_generator_rng_is_reproducible(model, cells):
    a = model.embed_cells(cells, rng=np.random.default_rng(5))
    b = model.embed_cells(cells, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1]["rng_seed"] == b[1]["rng_seed"]


def test_monotone_transforms_give_same_input(model, cells):
    lognorm = cells.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    dense = cells.copy()
    dense.X = cells.X.toarray()
    t0, _ = model.tokenize(cells)
    for other in (lognorm, dense):
        t1, _ = model.tokenize(other)
        np.testing.assert_array_equal(t0.values, t1.values)
    np.testing.assert_array_equal(model.embed_cells(cells)[0], model.embed_cells(lognorm)[0])


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_negative_or_nan_refused_and_data_untouched(model, cells, bad):
    a = cells.copy()
    a.X = a.X.toarray()
    a.X[3, 5] = bad
    before = a.X.copy()
    with pytest.raises(ValueError, match="negative|NaN"):
        fm.tl.embed(a, model)
    np.testing.assert_array_equal(a.X, before)
    assert "X_scgpt" not in a.obsm
    assert "scgpt" not in a.uns
    assert list(a.var.columns) == []


def test_no_matching_genes_says_use_gene_key(model, cells):
    a = cells.copy()
    a.var["symbol"] = a.var_names
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    with pytest.raises(ValueError, match="gene_key"):
        model.embed_cells(a)
    emb, params = model.embed_cells(a, gene_key="symbol")
    np.testing.assert_array_equal(emb, model.embed_cells(cells)[0])
    assert params["gene_key"] == "symbol"


def test_max_length_subsamples_with_cls_kept(model, cells):
    tok, tparams = fm.pp.tokenize(cells, model, max_length=50)
    assert isinstance(tok, fm.models.TokenizedCells)
    assert all(tok[i].size <= 50 and tok[i][0] == model.cls_id for i in range(len(tok)))
    assert tparams["n_cells_subsampled"] == int((tok.n_genes >= 50).sum()) > 0
    emb, params = model.embed_cells(cells, max_length=50, normalize=False)
    assert params["max_length"] == 50
    assert not params["normalize"]
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)


# ---------------------------------------------------------------- checkpoint loading
def _copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unknown_keys_reported(ckpt, tmp_path, caplog):
    import torch

    d = _copy_ckpt(ckpt, tmp_path / "extra")
    state = torch.load(d / "best_model.pt", weights_only=True)
    state["mystery.weight"] = torch.zeros(3)
    torch.save(state, d / "best_model.pt")
    with caplog.at_level(logging.INFO, logger="scfmkit"):
        load_scgpt(d, device="cpu")
    assert "mystery.weight" in caplog.text
    assert "decoder/MVC/classifier" in caplog.text


def test_missing_core_weights_refused(ckpt, tmp_path):
    import torch

    d = _copy_ckpt(ckpt, tmp_path / "missing")
    state = torch.load(d / "best_model.pt", weights_only=True)
    del state["transformer_encoder.layers.1.linear2.weight"]
    torch.save(state, d / "best_model.pt")
    with pytest.raises(ValueError, match="lack 1 core"):
        load_scgpt(d)


def test_truncated_checkpoint_refused(ckpt, tmp_path):
    d = _copy_ckpt(ckpt, tmp_path / "trunc")
    data = (d / "best_model.pt").read_bytes()
    (d / "best_model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_scgpt(d)


def test_args_not_matching_weights_refused(ckpt, tmp_path):
    d = _copy_ckpt(ckpt, tmp_path / "mismatch")
    args = json.loads((d / "args.json").read_text())
    args["d_hid"] = 128
    (d / "args.json").write_text(json.dumps(args))
    with pytest.raises(ValueError, match="does not belong"):
        load_scgpt(d)


def test_missing_files_errors(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError, match="Google Drive"):
        load_scgpt(None)
    d = _copy_ckpt(ckpt, tmp_path / "noweights")
    (d / "best_model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="best_model.pt"):
        load_scgpt(d)


def test_random_weights_with_real_vocab_and_args(scgpt_model_dir, kang):
    m = fm.models.load("scgpt-human", weights="random", seed=3)
    assert isinstance(m, ScGPTModel)
    assert m.weights_id == "random:3"
    cfg = m.module.cfg
    assert (cfg.ntoken, cfg.nlayers, cfg.d_model, cfg.nhead) == (60697, 12, 512, 8)
    same = fm.models.load("scgpt-human", weights="random", seed=3, path=scgpt_model_dir)
    a = kang[:3].copy()
    e1, _ = m.embed_cells(a, max_length=16)
    e2, _ = same.embed_cells(a, max_length=16)
    np.testing.assert_array_equal(e1, e2)
    assert e1.shape == (3, 512)
    other = fm.models.load("scgpt-human", weights="random", seed=4)
    assert not np.allclose(other.embed_cells(a, max_length=16)[0], e1)


# ---------------------------------------------------------------- AnnData wrappers
def test_tl_embed_from_checkpoint_path(ckpt, cells, tmp_path):
    from scfmkit.models import sha256_file

    out = fm.tl.embed(cells, str(ckpt), batch_size=8, copy=True)
    emb = out.obsm["X_scgpt"]
    assert emb.dtype == np.float32
    assert emb.shape == (cells.n_obs, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    p = out.uns["scgpt"]["params"]
    assert p["weights"] == f"sha256:{sha256_file(ckpt / 'best_model.pt')}"
    for key in ("max_length", "n_bins", "n_vars_matched", "frac_vars_matched", "rng_seed", "scfmkit_version", "model"):
        assert key in p
    assert p["n_vars_matched"] == 8355
    assert p["n_bins"] == 51
    assert p["max_length"] == 1200
    assert "X_scgpt" not in cells.obsm
    out.write_h5ad(tmp_path / "x.h5ad")  # params are h5ad-writable


def test_tl_embed_genes_token(model, cells):
    import torch

    fm.tl.embed_genes(cells, model, kind="token")
    g = cells.varm["scgpt_token"]
    ids = model.match_adata(cells).var_tokens
    assert g.shape == (cells.n_vars, 64)
    assert np.isnan(g[ids < 0]).all()
    assert not np.isnan(g[ids >= 0]).any()
    i = int(np.flatnonzero(ids >= 0)[0])
    with torch.inference_mode():
        expect = model.module.encoder(torch.tensor([ids[i]])).numpy()[0]
    np.testing.assert_allclose(g[i], expect, atol=1e-6)


def test_embed_genes_contextual(model, cells):
    a = cells[:6].copy()
    g, params = model.embed_genes(a, kind="contextual", batch_size=4)
    seen = np.asarray((a.X > 0).sum(0)).ravel() > 0
    ids = model.match_adata(a).var_tokens
    assert not np.isnan(g[seen & (ids >= 0)]).any()
    assert np.isnan(g[~seen | (ids < 0)]).all()
    assert params["n_genes_embedded"] == int((seen & (ids >= 0)).sum())


def test_pooling_and_emb_layer_checked(model, cells):
    with pytest.raises(ValueError, match="cls"):
        fm.tl.embed(cells, model, pooling="mean")
    with pytest.raises(ValueError, match="emb_layer"):
        fm.tl.embed(cells, model, emb_layer=3)


def test_bfloat16_autocast_close_to_fp32(model, cells):
    a = cells[:10].copy()
    ref, _ = model.embed_cells(a)
    low, params = model.embed_cells(a, precision="bfloat16")
    assert params["precision"] == "bfloat16"
    assert low.dtype == np.float32
    assert np.sum(ref * low, axis=1).min() > 0.98
    with pytest.raises(ValueError, match="precision"):
        model.embed_cells(a, precision="int8")


def test_mudata_rna_modality(model, cells):
    import mudata as md

    mdata = md.MuData({"rna": cells[:8].copy()})
    fm.tl.embed(mdata, model, batch_size=4)
    np.testing.assert_allclose(mdata["rna"].obsm["X_scgpt"], model.embed_cells(cells[:8])[0], atol=1e-6)
    assert "rna:X_scgpt" in mdata.obsm


def test_pp_bin_scgpt_matches_model_input(model, cells):
    a = cells[:12].copy()
    a = a[:, model.match_adata(a).var_tokens >= 0].copy()  # every gene in the vocabulary: bins = model input
    before = a.X.copy()
    out = fm.pp.bin_scgpt(a, rng=3, copy=True)
    assert "X_binned" not in a.layers
    assert (a.X != before).nnz == 0
    binned = out.layers["X_binned"]
    tok, _ = model.tokenize(a, rng=3)
    for i in range(a.n_obs):
        row = binned[i].toarray().ravel()
        np.testing.assert_array_equal(row[tok.columns_of(i)[1:]], tok.values_of(i)[1:])
        assert tok.columns_of(i)[0] == -1
        assert (row > 0).sum() == tok.n_genes[i]
    assert out.uns["scgpt_binning"]["params"]["rng_seed"] == 3
    lognorm = a.copy()
    sc.pp.log1p(lognorm)
    fm.pp.bin_scgpt(lognorm, rng=3)
    assert (lognorm.layers["X_binned"] != binned).nnz == 0
