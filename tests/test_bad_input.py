"""Bad input across the public API: a clear error (type and message that says the fix) or documented handling, and
the caller's object unchanged byte for byte. Grows with the API: add a case for each new way to get input wrong.
"""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scfmkit as fm


# ---- helpers
def _snapshot(a: ad.AnnData) -> dict:
    X = a.X
    return {
        "X": X.copy() if X is not None else None,
        "obs": a.obs.copy(),
        "var": a.var.copy(),
        "obsm": {k: np.array(v, copy=True) for k, v in a.obsm.items()},
        "varm": {k: np.array(v, copy=True) for k, v in a.varm.items()},
        "layers": sorted(a.layers),
        "uns": copy.deepcopy(dict(a.uns)),
    }


def _assert_unchanged(a: ad.AnnData, snap: dict) -> None:
    X = a.X
    if sparse.issparse(X):
        assert X.dtype == snap["X"].dtype and (X != snap["X"]).nnz == 0
        np.testing.assert_array_equal(X.indptr, snap["X"].indptr)
    else:
        np.testing.assert_array_equal(np.asarray(X), np.asarray(snap["X"]))
    pd.testing.assert_frame_equal(a.obs, snap["obs"])
    pd.testing.assert_frame_equal(a.var, snap["var"])
    assert sorted(a.obsm) == sorted(snap["obsm"]) and sorted(a.varm) == sorted(snap["varm"])
    for k, v in snap["obsm"].items():
        np.testing.assert_array_equal(a.obsm[k], v)
    assert sorted(a.layers) == snap["layers"]
    assert sorted(a.uns) == sorted(snap["uns"])


@pytest.fixture(scope="module")
def gf(shared_dir, tmp_path_factory):
    from scfmkit.models.geneformer import write_random_checkpoint

    d = write_random_checkpoint(
        tmp_path_factory.mktemp("bad") / "gf",
        shared_dir / "models" / "geneformer-v1",
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
    )
    return d


@pytest.fixture(scope="module")
def sg(shared_dir, tmp_path_factory):
    from scfmkit.models.scgpt import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("bad") / "sg", shared_dir / "models" / "scgpt-human", nlayers=1, embsize=32, nhead=4
    )


@pytest.fixture
def cells(shared_dir):
    a = ad.read_h5ad(shared_dir / "data" / "celltypist_sample_counts_559cells.h5ad")[:30]
    a = a[:, np.asarray((a.X > 0).sum(0)).ravel() > 0].copy()
    a.obs["batch"] = np.where(np.arange(a.n_obs) < 15, "b1", "b2")
    a.obs["cell_type"] = np.where(np.arange(a.n_obs) % 2 == 0, "T", "B")
    return a


def _raises(exc, match, fn, a):
    snap = _snapshot(a)
    with pytest.raises(exc, match=match):
        fn(a)
    _assert_unchanged(a, snap)


# ---- silent wrong results
@pytest.mark.parametrize("bs", [-1, 0])
def test_batch_size_not_positive(cells, gf, sg, bs):
    for model in (gf, sg):
        _raises(ValueError, "batch_size.*positive", lambda a, m=model: fm.tl.embed(a, m, batch_size=bs), cells)
        genes = lambda a, m=model: fm.tl.embed_genes(a, m, kind="contextual", batch_size=bs)  # noqa: E731
        _raises(ValueError, "batch_size", genes, cells)


def test_corrupted_weights_bytes(cells, gf, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "gf"
    shutil.copytree(gf, bad)
    sd = load_file(str(bad / "model.safetensors"))
    key = next(k for k in sd if "attention.self.query.weight" in k)
    sd[key][0, 0] = float("nan")
    save_file(sd, str(bad / "model.safetensors"))
    _raises(ValueError, "NaN or infinite.*corrupted", lambda a: fm.tl.embed(a, str(bad)), cells)


def test_n_counts_nan_or_text(cells, gf):
    a = cells.copy()
    a.obs["n_counts"] = np.asarray(a.X.sum(1)).ravel()
    a.obs.loc[a.obs_names[21], "n_counts"] = np.nan
    _raises(ValueError, r"n_counts.*NaN.*rows \[21\]", lambda x: fm.tl.embed(x, gf), a)
    a.obs["n_counts"] = "many"
    _raises(ValueError, "n_counts.*numeric", lambda x: fm.tl.embed(x, gf), a)


def test_label_transfer_compares_values_not_text():
    a = ad.AnnData(np.zeros((4, 1)))
    a.obs["true"] = [1, 2, 1, 2]
    a.obs["pred"] = [1.0, 2.0, 1.0, 2.0]
    res = fm.metrics.label_transfer(a, "true", "pred")
    assert res.set_index("metric").loc["accuracy", "value"] == 1.0
    a.obs["pred"] = ["X", "Y", "X", "Y"]
    _raises(ValueError, "share no label", lambda x: fm.metrics.label_transfer(x, "true", "pred"), a)


def test_token_gene_embeddings_without_any_matching_gene(cells, gf):
    a = cells.copy()
    a.var_names = [f"nothing{i}" for i in range(a.n_vars)]
    _raises(ValueError, "gene_key", lambda x: fm.tl.embed_genes(x, gf, kind="token"), a)


@pytest.mark.parametrize("key", ["X_pca", "X_umap"])
def test_key_added_of_another_tool(cells, gf, key):
    a = cells.copy()
    a.obsm[key] = np.zeros((a.n_obs, 2))
    a.uns[key[2:]] = {"params": {"zero_center": True}}
    _raises(ValueError, "another tool.*key_added", lambda x: fm.tl.embed(x, gf, key_added=key), a)
    b = cells.copy()
    fm.tl.embed(b, gf, key_added="X_mine")
    fm.tl.embed(b, gf, key_added="X_mine")  # scfmkit's own earlier result may be replaced
    assert "X_mine" in b.obsm


# ---- unhelpful crashes
def test_config_disagrees_with_weights(cells, gf, tmp_path):
    import json
    import shutil

    bad = tmp_path / "gf"
    shutil.copytree(gf, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match config.json"):
        fm.models.load(str(bad))


def test_truncated_safetensors(gf, tmp_path):
    import shutil

    bad = tmp_path / "gf"
    shutil.copytree(gf, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors.*truncated or corrupt; download it again"):
        fm.models.load(str(bad))


def test_dictionary_that_is_not_a_pickle(gf, tmp_path):
    import shutil

    bad = tmp_path / "gf"
    shutil.copytree(gf, bad)
    (bad / "token_dictionary.pkl").write_text("this is not a pickle")
    with pytest.raises(ValueError, match="not a readable Python pickle"):
        fm.models.load(str(bad))


def test_backed_anndata_in_baselines_and_binning(cells, tmp_path):
    path = tmp_path / "c.h5ad"
    cells.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    fm.tl.baselines(backed, methods=("random", "pca"), n_comps=5)
    assert backed.obsm["X_pca"].shape == (cells.n_obs, 5)
    mem = cells.copy()
    fm.tl.baselines(mem, methods=("random", "pca"), n_comps=5)
    np.testing.assert_allclose(np.abs(backed.obsm["X_pca"]), np.abs(mem.obsm["X_pca"]), atol=1e-4)
    out = fm.pp.bin_scgpt(backed, copy=True)
    assert (out.layers["X_binned"] != fm.pp.bin_scgpt(cells, copy=True).layers["X_binned"]).nnz == 0


def test_integration_with_one_batch(cells):
    a = cells.copy()
    a.obs["batch"] = "only"
    a.obsm["X_emb"] = np.random.default_rng(0).standard_normal((a.n_obs, 4))
    _raises(
        ValueError,
        "single value.*at least 2 batches",
        lambda x: fm.metrics.integration(x, ["X_emb"], batch_key="batch", label_key="cell_type"),
        a,
    )


def test_cuda_without_cuda(cells, gf):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _raises(ValueError, "no CUDA GPU.*device='cpu'", lambda a: fm.tl.embed(a, gf, device="cuda"), cells)


def test_wrong_mod_in_modality_embedding(cells):
    import mudata as md

    mdata = md.MuData({"rna": cells.copy()})
    with pytest.raises(KeyError, match="not in this MuData.*pass `mod=`"):
        fm.tl.modality_embedding(mdata, mod="prot")


@pytest.mark.parametrize("model_fixture", ["gf", "sg"])
def test_float16_matrix(cells, model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    a = cells.copy()
    a.X = a.X.toarray().astype(np.float16)
    want = fm.tl.embed(cells, model, copy=True).obsm
    got = fm.tl.embed(a, model, copy=True).obsm
    key = next(iter(want))
    np.testing.assert_allclose(got[key], want[key], atol=1e-6)


@pytest.mark.parametrize("model_fixture", ["gf", "sg"])
def test_chunk_size_zero(cells, model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    _raises(ValueError, "chunk_size.*positive", lambda a: fm.tl.embed(a, model, chunk_size=0), cells)


# ---- unclear messages
def test_empty_cell_names_absolute_row(cells, gf):
    a = cells.copy()
    X = a.X.tolil()
    X[21, :] = 0
    a.X = X.tocsr()
    a.X.eliminate_zeros()
    _raises(ValueError, r"rows \[21\]", lambda x: fm.tl.embed(x, gf, chunk_size=8), a)


def test_int64_overflow_is_named(cells, gf):
    a = cells.copy()
    X = a.X.astype(np.int64)
    X.data[:2] = np.iinfo(np.int64).max // 2 + 1
    a.X = X
    _raises(ValueError, "overflow int64", lambda x: fm.tl.embed(x, gf), a)


def test_lower_case_symbols_get_a_hint(cells, sg, gf):
    a = cells.copy()
    a.var_names = [g.lower() for g in a.var_names]
    _raises(ValueError, "upper case", lambda x: fm.tl.embed(x, sg), a)
    _raises(ValueError, "upper case", lambda x: fm.tl.embed(x, gf), a)
    _raises(ValueError, "upper case", lambda x: fm.pp.align_genes(x, gf), a)


def test_failed_cli_run_leaves_no_output_folder(cells, tmp_path):
    from scfmkit._cli import main

    path = tmp_path / "in.h5ad"
    a = cells.copy()
    a.var_names = [f"x{i}" for i in range(a.n_vars)]
    a.write_h5ad(path)
    out = tmp_path / "new" / "deeper" / "out.h5ad"
    assert main(["embed", str(path), str(out), "--model", "geneformer-v1", "--weights", "random"]) != 0
    assert not (tmp_path / "new").exists()


def test_align_genes_with_zero_overlap(cells, gf):
    a = cells.copy()
    a.var_names = [f"nothing{i}" for i in range(a.n_vars)]
    _raises(ValueError, "None of the .* genes", lambda x: fm.pp.align_genes(x, gf), a)
