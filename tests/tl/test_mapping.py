from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scfmkit as fm
from scfmkit._knn import knn_search, knn_weights, weighted_knn_transfer


def _scarches_reference_vote(q, r, labels, k):
    """scArches' weighted kNN written out cell by cell (sklearn brute-force neighbours), as the golden reference."""
    from sklearn.neighbors import KNeighborsTransformer

    knn = KNeighborsTransformer(n_neighbors=k, mode="distance", algorithm="brute", metric="euclidean").fit(r)
    dist, idx = knn.kneighbors(q)
    preds, uncs = [], []
    for d, i in zip(dist, idx, strict=True):
        s = (2.0 / np.std(d)) ** 2
        w = np.exp(-d / s)
        w = w / w.sum()
        best, best_p = None, 0.0
        for lab in np.unique(labels[i]):
            p = w[labels[i] == lab].sum()
            if best_p < p:
                best, best_p = lab, p
        preds.append(best)
        uncs.append(max(1 - best_p, 0))
    return np.array(preds), np.array(uncs), dist, idx


def _blobs(n, centers, seed, labels=("A", "B", "C"), noise=1.0):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, len(centers), n)
    X = centers[lab] + noise * rng.standard_normal((n, centers.shape[1]))
    return X, np.asarray(labels)[lab]


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_knn_search_matches_sklearn(chunk_size):
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    r, q = rng.standard_normal((300, 8)), rng.standard_normal((50, 8))
    d, i = knn_search(q, r, 10, chunk_size=chunk_size)
    d_ref, i_ref = NearestNeighbors(n_neighbors=10, algorithm="brute").fit(r).kneighbors(q)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(d, d_ref, rtol=1e-10, atol=1e-10)


def test_knn_search_errors():
    with pytest.raises(ValueError, match="same number of dims"):
        knn_search(np.zeros((3, 2)), np.zeros((3, 4)), 1)
    with pytest.raises(ValueError, match="k must be"):
        knn_search(np.zeros((3, 2)), np.zeros((3, 2)), 4)
    with pytest.raises(ValueError, match="NaN"):
        knn_search(np.full((3, 2), np.nan), np.zeros((3, 2)), 1)


def test_weights_uniform_when_distances_equal():
    w = knn_weights(np.ones((2, 4)))
    np.testing.assert_allclose(w, 0.25)


@pytest.mark.parametrize("k", [5, 15])
def test_weighted_knn_matches_scarches_formula(k):
    centers = np.array([[0, 0, 0], [3, 0, 0], [0, 3, 0]], dtype=float)
    r, r_lab = _blobs(400, centers, 1)
    q, _ = _blobs(120, centers, 2)
    res = weighted_knn_transfer(q, r, r_lab, k=k, chunk_size=33)
    pred, unc, dist, idx = _scarches_reference_vote(q, r, r_lab, k)
    np.testing.assert_array_equal(res["best"], pred)
    np.testing.assert_allclose(res["uncertainty"], unc, atol=1e-12)
    np.testing.assert_array_equal(res["indices"], idx)
    assert res["weights"].shape == (120, k)
    np.testing.assert_allclose(res["weights"].sum(axis=1), 1.0)
    # threshold -> Unknown
    thr = weighted_knn_transfer(q, r, r_lab, k=k, uncertainty_threshold=0.1)
    assert set(thr["pred"][thr["uncertainty"] > 0.1]) <= {"Unknown"}
    assert (thr["pred"][thr["uncertainty"] <= 0.1] == pred[unc <= 0.1]).all()


def _gene_blobs(n, seed, genes, types=("A", "B", "C"), batch="ref"):
    """Counts from 3 cell types over a fixed gene universe (each type has 10 marker genes)."""
    rng = np.random.default_rng(seed)
    universe = np.array([f"G{i}" for i in range(100)])
    base = np.random.default_rng(123).gamma(2.0, 1.0, (3, 100))
    for t in range(3):
        base[t, t * 10 : (t + 1) * 10] *= 10
    lab = rng.integers(0, 3, n)
    X = rng.poisson(base[lab]).astype(np.float32)
    pos = pd.Index(universe).get_indexer(genes)
    obs = pd.DataFrame({"cell_type": np.asarray(types)[lab], "batch": batch}, index=[f"{batch}{i}" for i in range(n)])
    return ad.AnnData(sparse.csr_matrix(X[:, pos]), obs=obs, var=pd.DataFrame(index=list(genes)))


@pytest.fixture
def ref_query():
    genes = [f"G{i}" for i in range(100)]
    ref = _gene_blobs(300, 0, genes)
    rng = np.random.default_rng(5)
    q_genes = list(rng.permutation(genes[:90])) + ["EXTRA1", "EXTRA2"]  # reordered, 90% overlap, extra genes
    q = _gene_blobs(120, 1, [g for g in q_genes if g.startswith("G")], batch="query")
    extra = ad.AnnData(sparse.csr_matrix((q.n_obs, 2), dtype=np.float32), var=pd.DataFrame(index=["EXTRA1", "EXTRA2"]))
    extra.obs_names = q.obs_names
    q = ad.concat([q, extra], axis=1, merge="first")
    q.obs = _gene_blobs(120, 1, genes[:1], batch="query").obs
    return ref, q


def test_map_pca_knn(ref_query, caplog):
    ref, q = ref_query
    ref.obsm["X_umap"] = np.random.default_rng(0).standard_normal((ref.n_obs, 2))
    ref_before = ref.copy()
    with caplog.at_level(logging.INFO, logger="scfmkit"):
        fm.tl.map_to_reference(q, ref, model="pca", label_key="cell_type", n_hvg=50, n_comps=10)
    assert "90 of 100 reference genes" in caplog.text
    pred = q.obs["cell_type_pred"]
    assert isinstance(pred.dtype, pd.CategoricalDtype)
    assert "Unknown" in pred.cat.categories
    assert (pred == q.obs["cell_type"]).mean() > 0.95
    assert q.obs["cell_type_uncertainty"].between(0, 1).all()
    assert q.obsm["X_pca_ref"].shape == (q.n_obs, 10)
    assert q.obsm["X_umap_ref"].shape == (q.n_obs, 2)
    params = q.uns["map_to_reference"]["params"]
    assert params["space"] == "pca"
    assert params["gene_overlap"] == pytest.approx(0.9)
    # reference untouched
    assert list(ref.obs.columns) == list(ref_before.obs.columns)
    assert set(ref.obsm) == {"X_umap"}
    assert (ref.X != ref_before.X).nnz == 0
    # accuracy metric
    tab = fm.metrics.label_transfer(q, "cell_type", "cell_type_pred")
    assert tab.set_index("metric").loc["accuracy", "value"] > 0.95


def test_map_use_rep_and_threshold(ref_query):
    ref, q = ref_query
    rng = np.random.default_rng(0)
    centers = {"A": 0.0, "B": 4.0, "C": 8.0}
    ref.obsm["X_emb"] = np.array([[centers[c], 0.0] for c in ref.obs["cell_type"]]) + rng.normal(0, 1, (ref.n_obs, 2))
    q.obsm["X_emb"] = np.array([[centers[c], 0.0] for c in q.obs["cell_type"]]) + rng.normal(0, 1, (q.n_obs, 2))
    out = fm.tl.map_to_reference(q, ref, use_rep="X_emb", label_key="cell_type", k=10, copy=True)
    assert "cell_type_pred" not in q.obs  # copy=True
    direct = weighted_knn_transfer(q.obsm["X_emb"], ref.obsm["X_emb"], ref.obs["cell_type"].to_numpy(), k=10)
    np.testing.assert_allclose(out.obs["cell_type_uncertainty"], direct["uncertainty"])
    strict = fm.tl.map_to_reference(
        q, ref, use_rep="X_emb", label_key="cell_type", k=10, uncertainty_threshold=0.0, copy=True
    )
    unknown = strict.obs["cell_type_pred"] == "Unknown"
    np.testing.assert_array_equal(unknown, strict.obs["cell_type_uncertainty"] > 0)
    tab = fm.metrics.label_transfer(strict, "cell_type", "cell_type_pred").set_index("metric")
    assert tab.loc["unknown_share", "value"] == pytest.approx(unknown.mean())


def test_gene_overlap_warn_and_error(ref_query):
    ref, q = ref_query
    low = q[:, q.var_names.isin(["G1", "G2", "G3", "G4", "G5", "G11", "G12", "G21", "G22", "G23"])].copy()
    with pytest.warns(UserWarning, match="reference genes"):
        fm.tl.map_to_reference(low, ref, model="pca", label_key="cell_type", n_comps=3)
    none = q[:, ["EXTRA1", "EXTRA2"]].copy()
    with pytest.raises(ValueError, match="share no gene names"):
        fm.tl.map_to_reference(none, ref, model="pca", label_key="cell_type")
    assert "cell_type_pred" not in none.obs


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({}, ValueError, "exactly one space"),
        ({"use_rep": "X_emb", "model": "pca"}, ValueError, "exactly one space"),
        ({"use_rep": "X_missing"}, KeyError, "missing"),
        ({"use_rep": "X_emb", "label_key": "nope"}, KeyError, "label_key"),
        ({"use_rep": "X_emb", "method": "other"}, ValueError, "method"),
        ({"use_rep": "X_emb", "uncertainty_threshold": 2}, ValueError, "uncertainty_threshold"),
    ],
)
def test_bad_arguments(ref_query, kwargs, err, match):
    ref, q = ref_query
    ref.obsm["X_emb"] = np.zeros((ref.n_obs, 2))
    q.obsm["X_emb"] = np.zeros((q.n_obs, 2))
    kwargs = {"label_key": "cell_type", **kwargs}
    with pytest.raises(err, match=match):
        fm.tl.map_to_reference(q, ref, **kwargs)
    assert "cell_type_pred" not in q.obs


@pytest.mark.parametrize("scarches_model", ["scanvi", "scvi"])
def test_scarches_surgery(ref_query, scarches_model):
    ref, q = ref_query
    fm.tl.map_to_reference(
        q,
        ref,
        method="scarches",
        scarches_model=scarches_model,
        label_key="cell_type",
        max_epochs=2,
        scanvi_max_epochs=1,
        query_max_epochs=1,
        scvi_kwargs={"n_latent": 4},
    )
    key = "X_scANVI_ref" if scarches_model == "scanvi" else "X_scVI_ref"
    assert q.obsm[key].shape == (q.n_obs, 4)
    assert q.obs["cell_type_uncertainty"].between(0, 1).all()
    assert set(q.obs["cell_type_pred"].cat.categories) == {"A", "B", "C", "Unknown"}
    assert q.uns["map_to_reference"]["params"]["space"] == f"scarches:{scarches_model}"


def test_scarches_refuses_lognorm(ref_query):
    import scanpy as sc

    ref, q = ref_query
    sc.pp.log1p(q)
    with pytest.raises(ValueError, match="needs raw counts"):
        fm.tl.map_to_reference(q, ref, method="scarches", label_key="cell_type", max_epochs=1)
    assert "cell_type_pred" not in q.obs


def test_mudata(ref_query):
    mudata = pytest.importorskip("mudata")
    ref, q = ref_query
    md = mudata.MuData({"rna": q})
    fm.tl.map_to_reference(md, ref, model="pca", label_key="cell_type", n_comps=5)
    assert "cell_type_pred" in md["rna"].obs
    assert md.obsm["rna:X_pca_ref"].shape == (q.n_obs, 5)


def test_label_transfer_values():
    obs = pd.DataFrame(
        {"t": ["a", "a", "b", "b", "c", None], "p": ["a", "b", "b", "Unknown", "c", "a"]},
        index=[f"c{i}" for i in range(6)],
    )
    adata = ad.AnnData(obs=obs)
    tab = fm.metrics.label_transfer(adata, "t", "p")
    m = tab[tab.label == "all"].set_index("metric")["value"]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["accuracy_assigned"] == pytest.approx(3 / 4)
    assert m["unknown_share"] == pytest.approx(1 / 5)
    f1 = tab[tab.metric == "f1"].set_index("label")["value"]
    # a: P=1/1, R=1/2 -> 2/3; b: P=1/2, R=1/2 -> 1/2; c: 1
    np.testing.assert_allclose(f1[["a", "b", "c"]], [2 / 3, 1 / 2, 1])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    with pytest.raises(KeyError, match="obs column"):
        fm.metrics.label_transfer(adata, "t", "nope")


def test_map_with_foundation_model_zero_shot():
    """Geneformer V1 (real vocabulary and config, random weights) applied to both on their shared genes."""
    pbmc = fm.datasets.pbmc_3batch()
    ref = pbmc[pbmc.obs["donor"] == "3pv2"][:24].copy()
    q = pbmc[pbmc.obs["donor"] == "5p"][:8].copy()
    q = q[:, q.var_names[::-1][:1500]].copy()  # reordered, 85% of the reference genes
    fm.tl.map_to_reference(q, ref, model="geneformer-v1", weights="random", input="lognorm", label_key="cell_type", k=5)
    assert q.obsm["X_geneformer"].shape == (8, 256)
    params = q.uns["map_to_reference"]["params"]
    assert params["space"] == "model:geneformer-v1"
    assert params["n_genes"] == 1500
    assert "X_geneformer" not in ref.obsm
    # the same as embedding both on the shared genes by hand and mapping with use_rep
    ref2, q2 = ref[:, q.var_names].copy(), q.copy()
    fm.tl.embed(ref2, "geneformer-v1", weights="random", input="lognorm")
    np.testing.assert_allclose(
        fm.tl.map_to_reference(q2, ref2, use_rep="X_geneformer", label_key="cell_type", k=5, copy=True)
        .obs["cell_type_uncertainty"]
        .to_numpy(),
        q.obs["cell_type_uncertainty"].to_numpy(),
        atol=1e-6,
    )
