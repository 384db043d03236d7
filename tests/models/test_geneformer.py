from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scfmkit as fm
from scfmkit.models._rank_tokenize import rank_value_tokenize
from scfmkit.models.geneformer import GeneformerModel, detect_variant


@pytest.fixture(scope="module")
def v1(gf_v1_dir) -> GeneformerModel:
    return fm.models.load(gf_v1_dir)


@pytest.fixture(scope="module")
def v2(gf_v2_dir) -> GeneformerModel:
    return fm.models.load(gf_v2_dir)


@pytest.fixture
def small(celltypist) -> ad.AnnData:
    return celltypist[:12].copy()


# ---------------------------------------------------------------- tokenizer kernel
def test_rank_value_tokenize_by_hand():
    # 2 cells x 4 genes; medians make gene 3 rank first in cell 0 despite a smaller count
    counts = sparse.csr_matrix(np.array([[4.0, 0.0, 2.0, 1.0], [0.0, 3.0, 3.0, 0.0]]))
    n_counts = np.array([10.0, 6.0])
    medians = np.array([2.0, 1.0, 4.0, 0.25])
    tokens = np.array([10, 11, 12, 13])
    # cell 0 values: 4/10*1e4/2=2000, 2/10*1e4/4=500, 1/10*1e4/0.25=4000 -> genes 3, 0, 2
    # cell 1 values: 3/6*1e4/1=5000, 3/6*1e4/4=1250 -> genes 1, 2
    out = rank_value_tokenize(counts, n_counts, medians, tokens, max_genes=10)
    assert out[0].tolist() == [13, 10, 12]
    assert out[1].tolist() == [11, 12]
    trunc = rank_value_tokenize(counts, n_counts, medians, tokens, max_genes=2, cls_token=2, eos_token=3)
    assert trunc[0].tolist() == [2, 13, 10, 3]
    assert trunc[1].tolist() == [2, 11, 12, 3]


def test_rank_value_ties_as_numpy_argsort():
    """Exact ties between different genes are ordered as the reference orders them: np.argsort(-values)."""
    row = np.array([1.0, 1.0, 1.0, 2.0])
    counts = sparse.csr_matrix(row[None])
    out = rank_value_tokenize(counts, np.array([5.0]), np.ones(4), np.array([5, 6, 7, 8]), max_genes=10)
    assert out[0].tolist() == np.array([5, 6, 7, 8])[np.argsort(-(row / 5.0 * 10000))].tolist()


def _oracle(counts, n_counts, medians, tokens, column, max_genes):
    """The reference's arithmetic in plain numpy, every stored entry (explicit zeros too) ordered by numpy's
    ``argsort(-value)`` per cell, as the reference: what the compiled kernel must equal."""
    counts = counts.tocsr().sorted_indices()
    recip = np.true_divide(1.0, n_counts)
    dt = np.result_type(counts.dtype, recip.dtype)
    out = []
    for i in range(counts.shape[0]):
        lo, hi = counts.indptr[i], counts.indptr[i + 1]
        col = column[counts.indices[lo:hi]]
        x = counts.data[lo:hi][col >= 0].astype(dt)
        col = col[col >= 0]
        v = (x * recip[i].astype(dt) * dt.type(10_000)).astype(np.float64) * np.true_divide(1.0, medians[col])
        order = np.argsort(-v)[:max_genes]
        out.append(tokens[col[order]])
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
@pytest.mark.parametrize("totals", ["float32", "float64", "int64"])
def test_rank_value_tokenize_matches_oracle(dtype, totals):
    # tie-heavy integer counts, shared medians, explicit zeros, unsorted indices, unmatched columns, truncation
    rng = np.random.default_rng(7)
    dense = rng.poisson(0.8, size=(60, 300)) * (rng.random((60, 300)) < 0.6)
    dense[5] = 0
    dense[5, 3] = 2  # a cell with one gene
    counts = sparse.csr_matrix(dense.astype(dtype))
    counts.data[::17] = 0  # explicit zeros are ranked (last), as the reference ranks stored entries
    counts = sparse.csr_matrix((counts.data, counts.indices, counts.indptr), shape=counts.shape)
    perm = [rng.permutation(np.arange(lo, hi)) for lo, hi in zip(counts.indptr[:-1], counts.indptr[1:], strict=True)]
    perm = np.concatenate(perm)
    unsorted = sparse.csr_matrix((counts.data[perm], counts.indices[perm], counts.indptr), shape=counts.shape)
    column = np.full(300, -1, np.int64)
    matched = np.sort(rng.choice(300, 250, replace=False))
    column[matched] = np.arange(250)
    medians = rng.choice([0.5, 1.0, 1.5, 3.0, 1.0 + 2**-40], 250)
    tokens = rng.permutation(250) + 7
    n_counts = (np.asarray(counts.sum(1)).ravel() + 5).astype(totals)
    for max_genes in (1, 40, 4096):
        got = rank_value_tokenize(
            unsorted, n_counts, medians, tokens, max_genes=max_genes, column=column, cls_token=1, eos_token=2
        )
        want = _oracle(counts, n_counts, medians, tokens, column, max_genes)
        for i in range(60):
            assert got[i][1:-1].tolist() == want[i].tolist(), (i, max_genes)
            assert got[i][0] == 1 and got[i][-1] == 2


def test_rank_value_tokenize_large_cells_and_near_ties():
    # values that agree in their upper 32 bits and differ below (the radix sort's second stage), many genes per cell
    rng = np.random.default_rng(3)
    n_genes = 6000
    medians = 1.0 + rng.integers(0, 4, n_genes) * 2.0**-45  # nearly equal medians: equal upper halves
    counts = sparse.csr_matrix(rng.integers(1, 3, size=(3, n_genes)).astype(np.float64))
    n_counts = np.asarray(counts.sum(1)).ravel()
    tokens = np.arange(n_genes) + 40_000  # int32 token ids
    got = rank_value_tokenize(counts, n_counts, medians, tokens, max_genes=5000)
    want = _oracle(counts, n_counts, medians, tokens, np.arange(n_genes), 5000)
    assert got.input_ids.dtype == np.int32
    for i in range(3):
        assert got[i].tolist() == want[i].tolist()


# ---------------------------------------------------------------- loading
def test_variant_from_dictionaries_not_folder_name(gf_v2_dir, tmp_path):
    misleading = tmp_path / "geneformer-v1-looking"
    shutil.copytree(gf_v2_dir, misleading)
    assert detect_variant(misleading) == "geneformer-v2"
    m = fm.models.load(misleading)
    assert m.variant == "V2" and m.input_size == 4096


def test_v1_v2_properties(v1, v2):
    assert (v1.variant, v1.input_size) == ("V1", 2048)
    assert (v2.variant, v2.input_size) == ("V2", 4096)
    assert v1.weights_id.startswith("sha256:")


def test_bin_and_safetensors_give_same_embeddings(gf_v1_dir, tmp_path, small):
    import torch
    from safetensors.torch import load_file

    bin_dir = tmp_path / "bin"
    shutil.copytree(gf_v1_dir, bin_dir)
    torch.save(load_file(str(bin_dir / "model.safetensors")), bin_dir / "pytorch_model.bin")
    (bin_dir / "model.safetensors").unlink()
    a = fm.tl.embed(small, gf_v1_dir, copy=True).obsm["X_geneformer"]
    b = fm.tl.embed(small, bin_dir, copy=True).obsm["X_geneformer"]
    np.testing.assert_array_equal(a, b)


def test_missing_weights_says_what_to_do(shared_dir):
    with pytest.raises(FileNotFoundError, match="weights='random'"):
        fm.models.load(shared_dir / "models" / "geneformer-v1")


def test_truncated_checkpoint_refused(gf_v1_dir, tmp_path, small):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(gf_v1_dir, bad)
    sd = load_file(str(bad / "model.safetensors"))
    del sd["bert.encoder.layer.0.attention.self.query.weight"]
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks 1 core BERT weights"):
        fm.tl.embed(small, bad)


def test_random_weights_are_seeded(shared_dir, small):
    a = fm.models.load("geneformer-v1", weights="random", seed=3)
    b = fm.models.load(shared_dir / "models" / "geneformer-v1", weights="random", seed=3)
    assert a.weights_id == "random:3"
    sa, sb = a._state_dict, b._state_dict
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)


def test_v2_alias_finds_shared_folder():
    m = fm.models.load("geneformer-v2-gc95M", weights="random")
    assert m.variant == "V2"
    assert fm.models.load("geneformer-v2", weights="random").source.endswith("geneformer-v2-gc95M")


def test_hub_offline_error_points_to_local_dir(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setenv("SCFMKIT_MODELS_DIR", str(tmp_path))
    fm.settings.reset()
    with pytest.raises(OSError, match="model='/path/to/dir'"):
        fm.models.load("geneformer-v1")


def test_hub_download_assembles_released_layout(monkeypatch, tmp_path, gf_v1_dir):
    """The hub code path with a fake hub that serves files from a local folder."""
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, *, subfolder=None, cache_dir=None, **kwargs):
        calls.append((repo_id, subfolder, filename))
        src = gf_v1_dir / filename
        if not src.exists():  # the shared folder names some V1 dictionaries without the _gc30M suffix
            src = gf_v1_dir / filename.replace("_gc30M", "")
        dest = tmp_path / "hubcache" / (subfolder or "") / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("SCFMKIT_MODELS_DIR", str(tmp_path / "none"))
    fm.settings.reset()
    m = fm.models.load("geneformer-v1")
    assert m.variant == "V1" and m.weights_id.startswith("sha256:")
    assert ("ctheodoris/Geneformer", "Geneformer-V1-10M", "model.safetensors") in calls


# ---------------------------------------------------------------- input handling
def test_symbols_and_ensembl_give_same_tokens(v1, small):
    tok_sym, cov = fm.pp.tokenize(small, v1)
    ens = small[:, small.var_names.isin(list(v1.vocab.name_to_id))].copy()
    ens.var["ensembl"] = [v1.vocab.name_to_id[g] for g in ens.var_names]
    ens.obs["n_counts"] = np.asarray(small.X.sum(1)).ravel()
    tok_ens, cov_ens = fm.pp.tokenize(ens, v1, gene_key="ensembl")
    assert cov["gene_id_type"] == "symbol" and cov_ens["gene_id_type"] == "ensembl"
    np.testing.assert_array_equal(tok_sym.input_ids, tok_ens.input_ids)


def test_duplicates_repeated_as_the_reference_or_summed(v1, caplog):
    genes = ["CD3E", "CD3E", "MS4A1", "LYZ"]
    X = sparse.csr_matrix(np.array([[3, 4, 5, 1], [1, 0, 2, 9]], dtype=np.float32))
    dup = ad.AnnData(X, var=pd.DataFrame({"symbol": genes}, index=[f"v{i}" for i in range(4)]))
    summed = ad.AnnData(
        sparse.csr_matrix(np.array([[7, 5, 1], [1, 2, 9]], dtype=np.float32)),
        var=pd.DataFrame(index=["CD3E", "MS4A1", "LYZ"]),
    )
    a, cov = fm.pp.tokenize(dup, v1, gene_key="symbol", duplicates="sum")
    b, _ = fm.pp.tokenize(summed, v1)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert cov["n_vars_matched"] == 4 and cov["n_genes_matched"] == 3
    # default: the V1 reference ranks both CD3E entries (a repeated token), with a warning naming the gene
    with caplog.at_level("WARNING", logger="scfmkit"):
        rep, _ = fm.pp.tokenize(dup, v1, gene_key="symbol")
    assert "CD3E" in caplog.text and "repeated tokens" in caplog.text
    cd3e = v1.vocab.token_dict[v1.vocab.name_to_id["CD3E"]]
    assert rep[0].tolist().count(cd3e) == 2 and rep[1].tolist().count(cd3e) == 1


def test_n_counts_from_obs_is_used(v1, small):
    a, _ = fm.pp.tokenize(small, v1)
    s = small.copy()
    s.obs["n_counts"] = np.asarray(s.X.sum(1)).ravel() * 3.0  # a per-cell scale does not change the ranking
    b, _ = fm.pp.tokenize(s, v1)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)


def test_lognorm_input_ranks_identically(v1, small):
    import scanpy as sc

    ln = small.copy()
    sc.pp.normalize_total(ln, target_sum=1e4)
    sc.pp.log1p(ln)
    a, _ = fm.pp.tokenize(small, v1)
    b, _ = fm.pp.tokenize(ln, v1, input="lognorm")
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    with pytest.raises(ValueError, match="input='lognorm'"):
        fm.pp.tokenize(ln, v1)
    with pytest.raises(ValueError, match="input='counts'"):
        fm.pp.tokenize(small, v1, input="lognorm")


@pytest.mark.parametrize(
    ("transform", "match"),
    [(lambda x: x - 1.0, "negative"), (lambda x: np.where(x > 3, np.nan, x), "NaN")],
)
def test_bad_values_refused_and_input_untouched(v1, small, transform, match):
    bad = small.copy()
    bad.X = sparse.csr_matrix(transform(bad.X.toarray()))
    before = bad.copy()
    with pytest.raises(ValueError, match=match):
        fm.tl.embed(bad, v1)
    assert "X_geneformer" not in bad.obsm and "geneformer" not in bad.uns
    np.testing.assert_array_equal(np.nan_to_num(bad.X.toarray()), np.nan_to_num(before.X.toarray()))


def test_cells_without_matched_genes_error(v1, small):
    s = small.copy()
    X = s.X.toarray()
    X[3, :] = 0
    X[3, 0] = 1  # counts only in a gene the model does not know
    s.X = sparse.csr_matrix(X)
    s.var_names = ["NOTAGENE" if i == 0 else g for i, g in enumerate(s.var_names)]
    with pytest.raises(ValueError, match="1 cell"):
        fm.tl.embed(s, v1)


def test_no_gene_matches_says_gene_key(v1, small):
    s = small.copy()
    s.var_names = [f"g{i}" for i in range(s.n_vars)]
    with pytest.raises(ValueError, match="gene_key"):
        fm.tl.embed(s, v1)


# ---------------------------------------------------------------- embeddings
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_batching_does_not_change_embeddings(v2, small, batch_size):
    ref = fm.tl.embed(small, v2, batch_size=3, copy=True).obsm["X_geneformer"]
    out = fm.tl.embed(small, v2, batch_size=batch_size, copy=True).obsm["X_geneformer"]
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)


def test_embed_writes_keys_in_input_order(v1, small):
    out = fm.tl.embed(small, v1, copy=True)
    assert "X_geneformer" not in small.obsm
    emb = out.obsm["X_geneformer"]
    assert emb.dtype == np.float32 and emb.shape == (small.n_obs, 32)
    params = out.uns["geneformer"]["params"]
    for key in ("model", "variant", "weights", "emb_layer", "pooling", "n_vars_matched", "scfmkit_version"):
        assert key in params
    # input order: embedding a permutation permutes the rows
    perm = np.random.default_rng(0).permutation(small.n_obs)
    out_p = fm.tl.embed(small[perm].copy(), v1, copy=True)
    np.testing.assert_allclose(out_p.obsm["X_geneformer"], emb[perm], atol=2e-5)


def test_emb_layer_semantics(v1, small):
    last = fm.tl.embed(small, v1, emb_layer=0, copy=True).obsm["X_geneformer"]
    second = fm.tl.embed(small, v1, emb_layer=-1, copy=True).obsm["X_geneformer"]
    assert not np.allclose(last, second)
    with pytest.raises(ValueError, match="emb_layer"):
        fm.tl.embed(small, v1, emb_layer=1)


def test_cls_pooling_v1_refused(v1, small):
    with pytest.raises(ValueError, match="no <cls>"):
        fm.tl.embed(small, v1, pooling="cls")


def test_backed_h5ad_streams_in_chunks(v1, small, tmp_path):
    path = tmp_path / "cells.h5ad"
    small.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    emb, _ = v1.embed_cells(backed, chunk_size=7)
    ref = fm.tl.embed(small, v1, copy=True).obsm["X_geneformer"]
    np.testing.assert_allclose(emb, ref, atol=2e-5)


@pytest.mark.parametrize("model", ["v1", "v2"])
def test_tokens_same_in_memory_backed_dense_and_chunked(model, small, tmp_path, request):
    m = request.getfixturevalue(model)
    path = tmp_path / "cells.h5ad"
    small.write_h5ad(path)
    want, _ = m.tokenize(small)
    dense = small.copy()
    dense.X = dense.X.toarray()
    chunks = [t for _, t, _ in m.iter_tokenize(small, chunk_size=5)]
    for got in (
        m.tokenize(ad.read_h5ad(path, backed="r"))[0],
        m.tokenize(dense)[0],
        m.tokenize(small, chunk_size=3)[0],
        fm.models.geneformer.TokenizedCells.concatenate(chunks),
    ):
        np.testing.assert_array_equal(got.offsets, want.offsets)
        np.testing.assert_array_equal(got.input_ids, want.input_ids)


def test_repeated_sparse_entries_are_summed(v1, small):
    X = small.X.tocoo()
    split = X.data > 1  # store every count above 1 as two entries, in reverse column order
    rows = np.concatenate([X.row, X.row[split]])[::-1]
    cols = np.concatenate([X.col, X.col[split]])[::-1]
    data = np.concatenate([np.where(split, X.data - 1, X.data), np.ones(split.sum(), X.data.dtype)])[::-1]
    order = np.argsort(rows, kind="stable")
    indptr = np.searchsorted(rows[order], np.arange(X.shape[0] + 1))
    messy = sparse.csr_matrix((data[order], cols[order], indptr), shape=X.shape)
    assert not messy.has_canonical_format
    a = small.copy()
    a.X = messy
    got, want = v1.tokenize(a)[0], v1.tokenize(small)[0]
    np.testing.assert_array_equal(got.input_ids, want.input_ids)
    assert not a.X.has_canonical_format  # the caller's matrix is left as it was


def _tokenize_sum(model, adata, queue):
    queue.put(int(model.tokenize(adata)[0].input_ids.astype(np.int64).sum()))


def test_tokenizer_safe_in_threads_and_forked_processes(v1, celltypist):
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    a = celltypist[:300].copy()  # enough cells for the kernels to use several threads
    want = int(v1.tokenize(a)[0].input_ids.astype(np.int64).sum())
    with ThreadPoolExecutor(3) as pool:  # concurrent calls
        futures = [pool.submit(v1.tokenize, a) for _ in range(3)]
        sums = [int(f.result()[0].input_ids.astype(np.int64).sum()) for f in futures]
    assert sums == [want] * 3
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    ctx = multiprocessing.get_context("fork")  # after the kernels ran in this process (numba's OpenMP layer dies here)
    queue = ctx.Queue()
    child = ctx.Process(target=_tokenize_sum, args=(v1, a, queue))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == want


def test_bf16_close_to_fp32(v1, small):
    a = fm.tl.embed(small, v1, copy=True).obsm["X_geneformer"]
    b = fm.tl.embed(small, v1, precision="bfloat16", copy=True).obsm["X_geneformer"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("kind", ["contextual", "token"])
def test_embed_genes(v2, small, kind):
    out = fm.tl.embed_genes(small, v2, kind=kind, copy=True)
    g = out.varm[f"geneformer_{kind}"]
    assert g.shape == (small.n_vars, 32)
    known = fm.pp.align_genes(small, v2, copy=True).var["geneformer_token"].to_numpy() >= 0
    assert np.isnan(g[~known]).all()
    assert np.isfinite(g[known]).any(axis=1).sum() > 100


def test_align_genes_records_coverage(v1, small):
    out = fm.pp.align_genes(small, v1, copy=True)
    assert out.var["geneformer_token"].dtype.kind == "i"
    assert out.uns["geneformer_genes"]["n_vars_matched"] == int((out.var["geneformer_token"] >= 0).sum())


@pytest.mark.parametrize("value", [-1.0, 0.5, np.inf, np.nan])
@pytest.mark.parametrize("dense", [False, True])
def test_one_bad_value_in_a_gene_without_token_refused(v1, small, value, dense):
    """The ranking kernel's value check sees every stored value, also of genes the model lacks."""
    s = small.copy()
    X = s.X.toarray().astype(np.float64)
    X[-1, 0] = value  # the last cell, in a gene the model does not know
    s.var_names = ["NOTAGENE" if i == 0 else g for i, g in enumerate(s.var_names)]
    s.X = X if dense else sparse.csr_matrix(X)
    with pytest.raises(ValueError, match=r"adata\.X"):
        fm.pp.tokenize(s, v1, chunk_size=7)
