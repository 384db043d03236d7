"""Blockwise runs on dask: identical tokens and embeddings within 1e-6 of the in-memory path, resumable stores."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("distributed")
pytest.importorskip("zarr")

import scfmkit as fm
from scfmkit import _blockwise, _dask

TINY = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "seed": 0}
N_CELLS, N_GENES = 60, 600


@pytest.fixture(scope="module")
def gf_dir(shared_dir, tmp_path_factory) -> Path:
    from scfmkit.models.geneformer import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("gf") / "v1", shared_dir / "models" / "geneformer-v1", **TINY
    )


@pytest.fixture(scope="module")
def cells(shared_dir):
    """60 real cells on their 600 most-detected genes (short token lists: fast tests)."""
    import anndata as ad

    a = ad.read_h5ad(shared_dir / "data" / "celltypist_sample_counts_559cells.h5ad")
    genes = np.argsort(-np.asarray((a.X > 0).sum(axis=0)).ravel(), kind="stable")[:N_GENES]
    return a[:N_CELLS, np.sort(genes)].copy()


@pytest.fixture(scope="module")
def reference(cells, gf_dir):
    return fm.tl.embed(cells, str(gf_dir), copy=True)


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes (1 thread each), always closed."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, timeout=60, death_timeout=60
    )
    c = Client(cluster, timeout=60)
    try:
        yield c
    finally:
        c.close(timeout=30)
        cluster.close(timeout=30)


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _params(adata, key="geneformer"):
    return {k: v for k, v in adata.uns[key]["params"].items() if k != "blocks"}


# --------------------------------------------------------------------------------------------- default scheduler


@pytest.mark.parametrize("block_size", [7, 25, 1000])
def test_tokens_identical(cells, gf_dir, block_size):
    tok0, cov0 = fm.pp.tokenize(cells, str(gf_dir))
    tok1, cov1 = fm.pp.tokenize(cells, str(gf_dir), block_size=block_size)
    np.testing.assert_array_equal(tok1.offsets, tok0.offsets)
    np.testing.assert_array_equal(tok1.input_ids, tok0.input_ids)
    assert tok1.input_ids.dtype == tok0.input_ids.dtype
    assert cov1 == pytest.approx(cov0)


def test_duplicates_option_honoured(cells, gf_dir):
    kw = {"duplicates": "sum", "copy": True}
    ref = fm.tl.embed(cells, str(gf_dir), **kw)
    out = fm.tl.embed(cells, str(gf_dir), block_size=25, **kw)
    np.testing.assert_allclose(out.obsm["X_geneformer"], ref.obsm["X_geneformer"], atol=1e-6)


@pytest.mark.parametrize("duplicates", ["reference", "sum"])
def test_genes_gene_key_and_duplicates(cells, gf_dir, duplicates):
    """Blockwise contextual gene embeddings match the in-memory ones with ``gene_key`` and a repeated gene id."""
    a = cells.copy()
    ids = a.var_names.to_numpy().copy()
    ids[1] = ids[0]  # two var entries on one gene id
    a.var["ens"] = ids
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    kw = {"gene_key": "ens", "duplicates": duplicates, "copy": True}
    g0 = fm.tl.embed_genes(a, str(gf_dir), **kw).varm["geneformer_contextual"]
    g1 = fm.tl.embed_genes(a, str(gf_dir), block_size=25, **kw).varm["geneformer_contextual"]
    np.testing.assert_array_equal(np.isnan(g1), np.isnan(g0))
    np.testing.assert_allclose(g1, g0, atol=1e-6)


def test_lazy_zarr_input(cells, gf_dir, reference, tmp_path):
    from anndata.experimental import read_lazy

    cells.write_zarr(tmp_path / "in.zarr")
    lazy = read_lazy(str(tmp_path / "in.zarr"))
    out = fm.tl.embed(lazy, str(gf_dir), block_size=16, copy=True)
    np.testing.assert_allclose(np.asarray(out.obsm["X_geneformer"]), reference.obsm["X_geneformer"], atol=1e-6)
    assert _params(out) == pytest.approx(_params(reference))
    assert out.uns["geneformer"]["params"]["blocks"]["n_blocks"] == 4


def test_backed_h5ad_input(cells, gf_dir, reference, tmp_path):
    import anndata as ad

    cells.write_h5ad(tmp_path / "in.h5ad")
    backed = ad.read_h5ad(tmp_path / "in.h5ad", backed="r")
    emb, _ = _blockwise.embed_blockwise(backed, fm.models.load(str(gf_dir)), block_size=25)
    np.testing.assert_allclose(emb, reference.obsm["X_geneformer"], atol=1e-6)
    backed.file.close()


def test_gene_chunks_refused(cells, gf_dir):
    import dask.array as da

    lazy = cells.copy()
    lazy.X = da.from_array(cells.X.toarray(), chunks=(20, 100))
    with pytest.raises(ValueError, match="chunks across genes"):
        fm.tl.embed(lazy, str(gf_dir))
    assert "X_geneformer" not in lazy.obsm


def test_scgpt_blockwise(shared_dir, cells, tmp_path):
    from scfmkit.models.scgpt import write_random_checkpoint

    ck = write_random_checkpoint(
        tmp_path / "sg", shared_dir / "models" / "scgpt-human", seed=0, nlayers=2, embsize=32, nhead=4, d_hid=32
    )
    ref = fm.tl.embed(cells, str(ck), copy=True, max_length=64)
    out = fm.tl.embed(cells, str(ck), block_size=22, copy=True, max_length=64)
    np.testing.assert_allclose(out.obsm["X_scgpt"], ref.obsm["X_scgpt"], atol=1e-6)
    assert _params(out, "scgpt") == pytest.approx(_params(ref, "scgpt"))
    g0 = fm.tl.embed_genes(cells, str(ck), copy=True, max_length=64).varm["scgpt_contextual"]
    g1 = fm.tl.embed_genes(cells, str(ck), block_size=22, copy=True, max_length=64).varm["scgpt_contextual"]
    np.testing.assert_array_equal(np.isnan(g1), np.isnan(g0))
    np.testing.assert_allclose(g1, g0, atol=1e-6)


# -------------------------------------------------------------------------------------------- 2 worker processes


@pytest.mark.parametrize("block_size", [13, 40])
def test_cluster_embed_exact(client, cells, gf_dir, reference, block_size):
    out = fm.tl.embed(cells, str(gf_dir), block_size=block_size, copy=True)
    np.testing.assert_allclose(out.obsm["X_geneformer"], reference.obsm["X_geneformer"], atol=1e-6)
    assert _params(out) == pytest.approx(_params(reference))
    blocks = out.uns["geneformer"]["params"]["blocks"]
    assert blocks["block_size"] == block_size
    assert blocks["scheduler"].startswith("distributed:")
    # each worker process loaded the model at most once and kept it
    loaded = client.run(_dask.n_cached_models)
    assert set(loaded.values()) <= {0, 1}
    # a task that gets the model runs torch on the worker's budget (the nanny sets OMP_NUM_THREADS=1), not one
    # thread per core (a second OpenMP thread spin-waiting on every forward pass)
    ref = _dask.ModelRef.of(fm.models.load(str(gf_dir)))
    for worker in (w for w, n in loaded.items() if n):
        threads = client.submit(
            lambda r: (_dask.cached_model(r), __import__("torch").get_num_threads())[1],
            ref,
            pure=False,
            workers=[worker],
        )
        assert threads.result() == 1


def test_cluster_tokens_and_genes(client, cells, gf_dir):
    tok0, _ = fm.pp.tokenize(cells, str(gf_dir))
    tok1, _ = fm.pp.tokenize(cells, str(gf_dir), block_size=11)
    np.testing.assert_array_equal(tok1.input_ids, tok0.input_ids)
    np.testing.assert_array_equal(tok1.offsets, tok0.offsets)
    g0 = fm.tl.embed_genes(cells, str(gf_dir), copy=True).varm["geneformer_contextual"]
    out = fm.tl.embed_genes(cells, str(gf_dir), block_size=17, copy=True)
    g1 = out.varm["geneformer_contextual"]
    np.testing.assert_array_equal(np.isnan(g1), np.isnan(g0))
    np.testing.assert_allclose(g1, g0, atol=1e-6)
    assert out.uns["geneformer_contextual"]["params"]["n_genes_seen"] == int((~np.isnan(g0[:, 0])).sum())


def test_cluster_store_killed_then_resumed(client, cells, gf_dir, reference, tmp_path, caplog):
    model = fm.models.load(str(gf_dir))
    store = tmp_path / "emb.zarr"
    with pytest.raises(RuntimeError, match="on purpose"):
        _blockwise.embed_blockwise(
            cells, model, block_size=12, store=store, key="X_geneformer", _fail_blocks=frozenset({3, 4})
        )
    import zarr

    assert zarr.open_group(str(store), mode="r")["done"][:].tolist() == [True, True, True, False, False]
    with caplog.at_level(logging.INFO, logger="scfmkit"):
        out = fm.tl.embed(cells, model, block_size=12, store=str(store), copy=True)
    assert "3 of 5 blocks already finished" in caplog.text
    emb = out.obsm["X_geneformer"]
    assert _dask.is_dask(emb)
    np.testing.assert_allclose(emb.compute(), reference.obsm["X_geneformer"], atol=1e-6)
    fresh = fm.tl.embed(cells, model, block_size=12, store=str(tmp_path / "fresh.zarr"), copy=True)
    np.testing.assert_array_equal(emb.compute(), fresh.obsm["X_geneformer"].compute())  # identical results
    assert _params(out) == pytest.approx(_params(reference))
    # a rerun of a finished store computes nothing and changes nothing
    before = _tree_hash(store)
    fm.tl.embed(cells, model, block_size=12, store=str(store), copy=True)
    assert _tree_hash(store) == before


def test_store_of_other_run_refused(cells, gf_dir, tmp_path):
    store = tmp_path / "emb.zarr"
    fm.tl.embed(cells, str(gf_dir), block_size=30, store=str(store), copy=True)
    before = _tree_hash(store)
    with pytest.raises(ValueError, match="other inputs or parameters.*emb_layer"):
        fm.tl.embed(cells, str(gf_dir), block_size=30, store=str(store), emb_layer=0, copy=True)
    with pytest.raises(ValueError, match="block_size"):
        fm.tl.embed(cells, str(gf_dir), block_size=20, store=str(store), copy=True)
    with pytest.raises(ValueError, match="obs_names"):
        fm.tl.embed(cells[::-1].copy(), str(gf_dir), block_size=30, store=str(store), copy=True)
    with pytest.raises(ValueError, match="other inputs or parameters.*duplicates"):  # tokens of another gene match
        fm.tl.embed(cells, str(gf_dir), block_size=30, store=str(store), duplicates="sum", copy=True)
    other = fm.models.load(str(gf_dir), weights="random", seed=1)  # another model's weights
    with pytest.raises(ValueError, match="other inputs or parameters.*weights"):
        fm.tl.embed(cells, other, block_size=30, store=str(store), copy=True)
    assert _tree_hash(store) == before
    import dask.array as da

    across = cells.copy()
    across.X = da.from_array(cells.X.toarray(), chunks=(30, 100))
    with pytest.raises(ValueError, match="chunks across genes"):
        fm.tl.embed(across, str(gf_dir), store=str(tmp_path / "new.zarr"), copy=True)
    assert not (tmp_path / "new.zarr").exists()
    (tmp_path / "other.zarr").mkdir()
    (tmp_path / "other.zarr" / "x.txt").write_text("not a store")
    with pytest.raises(ValueError, match="not a zarr store|did not write"):
        fm.tl.embed(cells, str(gf_dir), block_size=30, store=str(tmp_path / "other.zarr"), copy=True)


def test_unreachable_scheduler():
    with pytest.raises(ConnectionError, match="Could not reach a dask scheduler"):
        _dask.connect("tcp://127.0.0.1:9", timeout=2)


def test_cluster_knn_blockwise(client, reference):
    import dask.array as da

    emb = reference.obsm["X_geneformer"]
    ref = reference[:40].copy()
    ref.obs["cell_type"] = np.where(emb[:40, 0] > np.median(emb[:40, 0]), "a", "b")
    q0 = reference[40:].copy()
    q1 = q0.copy()
    q1.obsm["X_geneformer"] = da.from_array(q0.obsm["X_geneformer"], chunks=(7, -1))
    kw = {"use_rep": "X_geneformer", "label_key": "cell_type", "k": 5, "copy": True}
    a, b = fm.tl.map_to_reference(q0, ref, **kw), fm.tl.map_to_reference(q1, ref, **kw)
    np.testing.assert_array_equal(b.obs["cell_type_pred"], a.obs["cell_type_pred"])
    np.testing.assert_array_equal(b.obs["cell_type_uncertainty"], a.obs["cell_type_uncertainty"])


def test_pca_blockwise(cells):
    import dask.array as da
    from scipy import sparse

    lazy = cells.copy()
    meta = sparse.csr_matrix((0, cells.n_vars), dtype=cells.X.dtype)
    lazy.X = da.from_array(cells.X, chunks=(16, -1), asarray=False, meta=meta)
    kw = {"methods": ["pca"], "n_hvg": 200, "n_comps": 8, "copy": True, "rng": 0}
    a, b = fm.tl.baselines(cells, **kw), fm.tl.baselines(lazy, **kw)
    np.testing.assert_array_equal(b.uns["baselines"]["hvg"], a.uns["baselines"]["hvg"])
    x0, x1 = a.obsm["X_pca"], b.obsm["X_pca"]
    # exact algorithm; the covariance is summed in float32, so agreement is to float32 rounding of the scores
    np.testing.assert_allclose(x1, x0, atol=1e-5 * np.abs(x0).max())
    np.testing.assert_allclose(b.uns["pca"]["variance"], a.uns["pca"]["variance"], rtol=1e-5)
    np.testing.assert_allclose(b.uns["pca"]["variance_ratio"], a.uns["pca"]["variance_ratio"], rtol=1e-5)


def test_cli_embed_zarr(cells, gf_dir, reference, tmp_path):
    import dask.array as da

    from scfmkit._cli import main

    cells.write_zarr(tmp_path / "in.zarr")
    out = tmp_path / "out.zarr"
    args = ["embed", str(tmp_path / "in.zarr"), str(out), "--model", str(gf_dir), "--block-size", "30"]
    assert main([*args, "--workers", "1"]) in (0, None)
    emb = da.from_zarr(str(out), component="X_geneformer").compute()
    np.testing.assert_allclose(emb, reference.obsm["X_geneformer"], atol=1e-6)
    assert main([*args, "--scheduler", "tcp://127.0.0.1:9"]) == 1  # unreachable: clear error, store untouched
    np.testing.assert_array_equal(da.from_zarr(str(out), component="X_geneformer").compute(), emb)
