"""scBERT: preprocessing, Performer forward and embeddings against the reference code's numbers.

The checkpoint has the real layout and shapes (16,906 genes, gene2vec 16,906 x 200, 7 expression tokens) but only
2 layers of 2 heads, so that a forward pass of 20 cells takes seconds. ``tests/data/golden/scbert_forward.npz`` holds
the reference's outputs on the same checkpoint and cells (see ``tests/data/golden/README_scbert.md``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

N_GENES = 16_906
SMALL = {"seed": 0, "depth": 2, "heads": 2, "dim_head": 32, "nb_features": 48, "ff_mult": 1}


@pytest.fixture(scope="module")
def genes(shared_dir) -> list[str]:
    from scfmkit.models._scbert_io import stand_in_gene_list

    return stand_in_gene_list(csv_path=shared_dir / "data" / "gencode_v44_gene_id2name.csv")


@pytest.fixture(scope="module")
def scbert_dir(genes, tmp_path_factory):
    from scfmkit.models._scbert_io import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("scbert") / "small", genes=genes, **SMALL)


@pytest.fixture(scope="module")
def model(scbert_dir):
    from scfmkit.models.scbert import load_scbert

    return load_scbert(scbert_dir)


@pytest.fixture(scope="module")
def golden(golden_dir):
    return dict(np.load(golden_dir / "scbert_forward.npz"))


@pytest.fixture(scope="module")
def cells(celltypist, golden):
    a = celltypist[:20].copy()
    assert list(a.obs_names) == list(golden["obs_names"])
    return a


# ---------------------------------------------------------------------------------------------------------------
# layout and loading
# ---------------------------------------------------------------------------------------------------------------


def test_checkpoint_layout(scbert_dir, genes, golden):
    import torch

    names = {p.name for p in scbert_dir.iterdir()}
    assert {"panglao_pretrain.pth", "gene_list.txt", "gene2vec_16906.npy"} <= names
    assert hashlib.sha256("\n".join(genes).encode()).hexdigest() == str(golden["gene_list_sha256"])
    ckpt = torch.load(scbert_dir / "panglao_pretrain.pth", weights_only=True)
    state = ckpt["model_state_dict"]
    assert state["pos_emb.emb.weight"].shape == (N_GENES + 1, 200)
    assert state["pos_emb.emb.weight"].dtype == torch.float64  # as the reference builds it from numpy
    assert torch.all(state["pos_emb.emb.weight"][-1] == 0)  # the trailing token's zero row
    assert state["token_emb.weight"].shape == (7, 200)
    assert state["performer.net.layers.0.0.fn.fast_attention.projection_matrix"].shape == (48, 32)
    assert np.load(scbert_dir / "gene2vec_16906.npy").shape == (N_GENES, 200)


def test_config_read_off_weights(model):
    c = model.config
    assert (c.num_tokens, c.max_seq_len, c.dim, c.depth, c.heads, c.dim_head, c.n_features, c.ff_mult) == (
        7,
        N_GENES + 1,
        200,
        2,
        2,
        32,
        48,
        1,
    )
    assert c.bin_num == 5 and not c.qkv_bias
    assert model.hidden_size == 200 and model.n_genes == N_GENES


def test_registered_and_dir_detected(scbert_dir):
    from scfmkit import models

    assert models.get_spec("scbert").family == "scbert"
    m = models.load(scbert_dir)
    assert m.family == "scbert" and m.weights_id.startswith("sha256:")


def test_random_weights_are_seeded(scbert_dir):
    from scfmkit.models._performer import PerformerConfig, random_state_dict
    from scfmkit.models.scbert import load_scbert

    a = load_scbert(scbert_dir, weights="random", seed=3)
    b = load_scbert(scbert_dir, weights="random", seed=3)
    assert a.weights_id == "random:3" and (a.config.depth, a.config.heads, a.config.n_features) == (6, 10, 266)
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)
    np.testing.assert_array_equal(sa["pos_emb.emb.weight"][:-1].numpy(), np.load(scbert_dir / "gene2vec_16906.npy"))
    cfg = PerformerConfig(max_seq_len=11, depth=1, heads=2, dim_head=8)
    g2v = np.zeros((10, 200))
    key = "performer.net.layers.0.0.fn.to_q.weight"
    assert not np.array_equal(random_state_dict(cfg, g2v, 3)[key], random_state_dict(cfg, g2v, 4)[key])


def test_missing_files_clear_errors(tmp_path, scbert_dir):
    import shutil

    from scfmkit.models.scbert import load_scbert

    with pytest.raises(FileNotFoundError, match="not on the HuggingFace hub"):
        load_scbert(None)
    d = tmp_path / "nogenes"
    d.mkdir()
    shutil.copy(scbert_dir / "panglao_pretrain.pth", d)
    with pytest.raises(FileNotFoundError, match="gene list"):
        load_scbert(d)
    shutil.copy(scbert_dir / "gene_list.txt", d)
    with pytest.raises(FileNotFoundError, match="gene2vec_16906.npy"):
        load_scbert(d, weights="random")


def test_pickled_weights_refused(tmp_path, scbert_dir):
    import shutil

    import torch

    from scfmkit.models import UnsafeFileError
    from scfmkit.models.scbert import load_scbert

    d = tmp_path / "evil"
    shutil.copytree(scbert_dir, d)
    torch.save({"model_state_dict": {}, "extra": _Opaque()}, d / "panglao_pretrain.pth")
    with pytest.raises(UnsafeFileError):
        load_scbert(d)


class _Opaque:
    pass


# ---------------------------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------------------------


def test_bins_match_reference(model, cells, golden):
    tokens, cov = model.tokenize(cells)
    assert len(tokens) == 20 and set(tokens.lengths) == {N_GENES + 1}
    np.testing.assert_array_equal(tokens[3], np.arange(N_GENES + 1))  # positions: the genes, then the trailing token
    bins = tokens.values.reshape(20, -1)
    np.testing.assert_array_equal(bins, golden["bins"])
    assert bins[:, -1].max() == 0  # the trailing token
    assert cov["n_genes_matched"] == len(set(model.genes) & set(cells.var_names))
    assert (tokens.n_genes >= (bins[:, :-1] > 0).sum(1)).all() and (tokens.n_genes >= 200).all()  # bin 0 if tiny
    assert 0 < cov["frac_counts_matched"] < 1 and cov["n_model_genes"] == N_GENES


def test_lognorm_input_gives_the_counts_bins(model, cells):
    import scanpy as sc

    ln = cells.copy()
    sc.pp.normalize_total(ln, target_sum=1e4)
    sc.pp.log1p(ln)
    a = model.tokenize(cells)[0].values
    b = model.tokenize(ln, input="lognorm")[0].values
    assert np.mean(a == b) > 0.9999  # equal but for values within float rounding of a bin edge
    with pytest.raises(ValueError, match="not raw counts"):
        model.tokenize(ln)
    with pytest.raises(ValueError, match="too large for log-normalised"):
        model.tokenize(cells, input="lognorm")


def test_backed_and_chunked_give_the_same_bins(model, cells, tmp_path):
    import anndata as ad

    path = tmp_path / "cells.h5ad"
    cells[:5].write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    a = model.tokenize(cells[:5])[0].values
    b = model.tokenize(backed, chunk_size=2)[0].values
    np.testing.assert_array_equal(a, b)


def test_reindex_first_duplicate_missing_zero(model):
    import anndata as ad
    from scipy import sparse

    g = model.genes
    X = sparse.csr_matrix(np.array([[5.0, 1.0, 7.0, 3.0, 0.0]], np.float32))
    a = ad.AnnData(X)
    a.var_names = [g[10], g[3], g[10], "NOT_A_GENE", g[0]]
    before = a.X.copy()
    bins = model.tokenize(a)[0].values
    assert (a.X != before).nnz == 0  # caller's data untouched
    # totals over model genes only: 5 + 1 (the second g[10] entry is dropped, as the reference's list.index)
    expect = np.zeros(N_GENES + 1, np.uint8)
    expect[10] = min(int(np.floor(np.log2(1 + 5 / 6 * 1e4))), 5)
    expect[3] = min(int(np.floor(np.log2(1 + 1 / 6 * 1e4))), 5)
    np.testing.assert_array_equal(bins, expect)
    match = model.match_genes(list(a.var_names))
    assert list(match.column) == [0, 1, -1, -1, 2]


def test_bad_input_errors(model, cells):
    import anndata as ad

    neg = cells[:2].copy()
    neg.X = neg.X.toarray()
    neg.X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        model.tokenize(neg)
    ens = ad.AnnData(cells.X[:2], var={"x": np.arange(cells.n_vars)})
    ens.var_names = [f"ENSG{i:011d}" for i in range(cells.n_vars)]
    with pytest.raises(ValueError, match="Ensembl"):
        model.tokenize(ens)
    none = cells[:2].copy()
    none.var_names = [f"g{i}" for i in range(cells.n_vars)]
    with pytest.raises(ValueError, match="gene symbols"):
        model.tokenize(none)
    with pytest.raises(ValueError, match="gene symbols"):
        model.embed_genes(none, kind="token")
    with pytest.raises(ValueError, match="`kind`"):
        model.embed_genes(cells, kind="input")
    with pytest.raises(ValueError, match="pooling"):
        model.embed_cells(cells[:1], pooling="cls_token")


# ---------------------------------------------------------------------------------------------------------------
# forward and embeddings
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forward(model, golden):
    import torch

    ids = torch.from_numpy(golden["bins"].astype(np.int64))
    with torch.inference_mode():
        enc = model.module(ids)
        logits = model.module.logits(enc[:, golden["positions"]])
    return enc.numpy(), logits.numpy()


def test_forward_matches_reference(forward, golden):
    enc, logits = forward
    np.testing.assert_allclose(enc[:, golden["encoding_positions"]], golden["encodings_at_positions"], atol=1e-5)
    np.testing.assert_allclose(logits, golden["logits_at_positions"], atol=1e-5)
    np.testing.assert_allclose(enc[:, :-1].mean(1), golden["emb_mean"], atol=1e-5)
    np.testing.assert_allclose(enc[:, -1], golden["emb_last"], atol=1e-5)
    np.testing.assert_allclose(enc[:, golden["positions"]].mean(0), golden["contextual_at_positions"], atol=1e-5)


def test_embed_cells_matches_reference(model, cells, golden, tmp_path):
    import scfmkit as fm

    a = cells[:8].copy()
    fm.tl.embed(a, model, batch_size=3)
    emb = a.obsm["X_scbert"]
    assert emb.dtype == np.float32 and emb.shape == (8, 200)
    np.testing.assert_allclose(emb, golden["emb_mean"][:8], atol=1e-5)
    params = a.uns["scbert"]["params"]
    assert params["pooling"] == "mean" and params["n_model_genes"] == N_GENES
    assert params["weights"].startswith("sha256:")
    a.write_h5ad(tmp_path / "cells.h5ad")  # params are h5ad-writable
    last, p = model.embed_cells(cells[:3], pooling="cls", batch_size=1)  # one cell per batch as well
    np.testing.assert_allclose(last, golden["emb_last"][:3], atol=1e-5)
    assert p["pooling"] == "cls"


def test_embed_genes(model, cells, forward, golden, tmp_path):
    import scfmkit as fm

    a = cells[:5].copy()
    fm.tl.embed_genes(a, model, kind="token")
    tok = a.varm["scbert_token"]
    idx = {g: i for i, g in enumerate(a.var_names)}
    g2v = np.load(model.source + "/gene2vec_16906.npy")
    shared = [g for g in model.genes[:500] if g in idx]
    np.testing.assert_allclose(tok[[idx[g] for g in shared]], g2v[[model.gene_index[g] for g in shared]], rtol=1e-6)
    assert np.isnan(tok[[i for g, i in idx.items() if g not in model.gene_index][:5]]).all()
    fm.tl.embed_genes(a, model, kind="contextual", batch_size=2)
    ctx = a.varm["scbert_contextual"]
    enc = forward[0]
    have = [p for p in golden["positions"] if model.genes[p] in idx]
    assert have
    np.testing.assert_allclose(ctx[[idx[model.genes[p]] for p in have]], enc[:5, have].mean(0), atol=1e-5)
    a.write_h5ad(tmp_path / "genes.h5ad")  # uns params are h5ad-writable


def test_classification_head(model, forward):
    import torch

    net = model.classification_head(4, seed=1)
    again = model.classification_head(4, seed=1)
    assert "classification" in model.capabilities
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True))
    head = net.head
    assert head.fc1.in_features == N_GENES + 1 and head.conv1.kernel_size == (1, 200)
    with torch.inference_mode():
        logits = head(torch.from_numpy(forward[0][:2]))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="n_classes"):
        model.classification_head(1)
