"""Every public pp/tl/metrics function that takes ``mod`` on real MuData: results land in ``mdata['rna']`` (and
``mdata.obsm['rna:...']`` for embeddings), equal the AnnData results, and the other modalities are untouched.

MuData used: the 10x Multiome PBMC file (RNA 45 genes + ATAC 174 peaks), the CITE-seq MuData of
:func:`scfmkit.datasets.pbmc_cite_mudata` (RNA + 14 ADTs, two runs as batches) and Papalexi 2021 ECCITE-seq
(RNA + gRNA counts) for the perturbation functions. Foundation models: a tiny random-weight Geneformer V1 checkpoint
in the released layout with the real dictionaries.
"""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scfmkit as fm

warnings.filterwarnings("ignore", category=FutureWarning)
if hasattr(md, "set_options"):  # mudata < 0.4
    md.set_options(pull_on_update=False)
else:  # mudata >= 0.4 moved the options to `mudata.settings`
    md.settings.pull_on_update = False

TINY = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "seed": 0}


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def gf_tiny(shared_dir, tmp_path_factory):
    from scfmkit.models.geneformer import write_random_checkpoint

    path = write_random_checkpoint(
        tmp_path_factory.mktemp("gf6") / "v1", shared_dir / "models" / "geneformer-v1", **TINY
    )
    return fm.models.load(path, device="cpu")


@pytest.fixture(scope="module")
def multiome_base(shared_dir):
    mdata = fm.datasets.pbmc_multiome(path=shared_dir / "data")
    keep = np.asarray(mdata["atac"].X.sum(axis=1)).ravel() > 0
    idx = np.flatnonzero(keep)[:120]
    return mdata[idx].copy()


@pytest.fixture
def multiome(multiome_base):
    return multiome_base.copy()


@pytest.fixture(scope="module")
def cite_base(shared_dir):
    mdata = fm.datasets.pbmc_cite_mudata(path=shared_dir / "data")
    rng = np.random.default_rng(0)
    idx = np.sort(np.concatenate([rng.choice(200, 40, replace=False), 200 + rng.choice(200, 40, replace=False)]))
    sub = mdata[idx].copy()
    # a coarse cell label from two ADTs, only so that label-based metrics have something to score
    prot = sub["protein"]
    cd14 = np.asarray(prot[:, "CD14_TotalSeqB"].X).ravel()
    cd3 = np.asarray(prot[:, "CD3_TotalSeqB"].X).ravel()
    label = np.where(cd14 > np.median(cd14), "CD14 high", np.where(cd3 > np.median(cd3), "CD3 high", "other"))
    sub["rna"].obs["label"] = pd.Categorical(label)
    return sub


@pytest.fixture
def cite(cite_base):
    return cite_base.copy()


@pytest.fixture(params=["multiome", "cite"])
def mdata(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def papalexi_base(shared_dir):
    adata = ad.read_h5ad(shared_dir / "data" / "papalexi2021_eccite_lowmoi.h5ad")
    keep = adata.obs["target"].isin(["non-targeting", "IFNGR1", "IFNGR2", "JAK2", "IRF1", "STAT1", "CD86", "ATF2"])
    adata = adata[keep].copy()
    rng = np.random.default_rng(0)
    take = np.concatenate(
        [rng.choice(np.flatnonzero(adata.obs["target"] == t), 25, replace=False) for t in adata.obs["target"].unique()]
    )
    adata = adata[np.sort(take)].copy()
    grna = ad.AnnData(X=sparse.csr_matrix(adata.obsm["grna_counts"]), obs=pd.DataFrame(index=adata.obs_names))
    rna = ad.AnnData(X=adata.X.copy(), obs=adata.obs[["target", "bio_rep"]].copy(), var=adata.var[[]].copy())
    rna.obs["target"] = rna.obs["target"].astype(str)
    return md.MuData({"rna": rna, "grna": grna})


@pytest.fixture
def papalexi(papalexi_base):
    return papalexi_base.copy()


def _others(mdata, mod="rna"):
    """A fingerprint of every modality but ``mod`` (values and every key)."""
    out = {}
    for name, a in mdata.mod.items():
        if name == mod:
            continue
        X = a.X.toarray() if sparse.issparse(a.X) else np.asarray(a.X)
        out[name] = (
            X.copy(),
            list(a.obs.columns),
            list(a.var.columns),
            list(a.obsm),
            list(a.layers),
            list(a.uns),
            list(a.obsp),
        )
    return out


def _assert_same(before, after):
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name][0], after[name][0])
        assert before[name][1:] == after[name][1:], name


def _rna_copy(mdata):
    return mdata["rna"].copy()


# ---------------------------------------------------------------------------------------------- foundation models


def test_embed(mdata, gf_tiny):
    before = _others(mdata)
    plain = _rna_copy(mdata)
    fm.tl.embed(mdata, gf_tiny, mod="rna", batch_size=64)
    fm.tl.embed(plain, gf_tiny, batch_size=64)
    emb = mdata["rna"].obsm["X_geneformer"]
    assert emb.shape == (mdata.n_obs, 32)
    np.testing.assert_allclose(emb, plain.obsm["X_geneformer"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mdata.obsm["rna:X_geneformer"], emb)
    assert "params" in mdata["rna"].uns["geneformer"]
    _assert_same(before, _others(mdata))


def test_embed_copy_and_missing_mod(cite, gf_tiny):
    out = fm.tl.embed(cite, gf_tiny, mod="rna", copy=True)
    assert isinstance(out, md.MuData)
    assert "X_geneformer" in out["rna"].obsm and "rna:X_geneformer" in out.obsm
    assert "X_geneformer" not in cite["rna"].obsm and "rna:X_geneformer" not in cite.obsm
    with pytest.raises(KeyError, match="pass `mod=`"):
        fm.tl.embed(cite, gf_tiny, mod="gex")
    with pytest.raises(ValueError, match="mod=None"):
        fm.tl.embed(cite, gf_tiny, mod=None)


def test_embed_genes(multiome, gf_tiny):
    before = _others(multiome)
    fm.tl.embed_genes(multiome, gf_tiny, kind="token", mod="rna")
    assert multiome["rna"].varm["geneformer_token"].shape == (multiome["rna"].n_vars, 32)
    _assert_same(before, _others(multiome))


def test_align_genes_and_tokenize(mdata, gf_tiny):
    before = _others(mdata)
    fm.pp.align_genes(mdata, gf_tiny, mod="rna")
    rna = mdata["rna"]
    assert {"geneformer_id", "geneformer_token"} <= set(rna.var.columns)
    assert rna.uns["geneformer_genes"]["n_vars"] == rna.n_vars
    tokens, coverage = fm.pp.tokenize(mdata, gf_tiny, mod="rna")
    tokens_plain, _ = fm.pp.tokenize(_rna_copy(mdata), gf_tiny)
    assert len(tokens) == mdata.n_obs
    for i in (0, mdata.n_obs - 1):
        np.testing.assert_array_equal(tokens[i], tokens_plain[i])
    _assert_same(before, _others(mdata))


def test_geneformer_perturb(multiome, gf_tiny):
    before = _others(multiome)
    fm.tl.geneformer_perturb(multiome, gf_tiny, genes="CD2", n_null=1, mod="rna", batch_size=64)
    rna = multiome["rna"]
    assert "geneformer_perturb_shift" in rna.obs
    assert "rna:X_geneformer_perturb" in multiome.obsm
    assert rna.obs["geneformer_perturb_shift"].notna().sum() == (rna[:, "CD2"].X.toarray().ravel() > 0).sum()
    _assert_same(before, _others(multiome))


def test_bin_scgpt(mdata):
    before = _others(mdata)
    plain = _rna_copy(mdata)
    fm.pp.bin_scgpt(mdata, mod="rna")
    fm.pp.bin_scgpt(plain)
    got = mdata["rna"].layers["X_binned"]
    assert (got != plain.layers["X_binned"]).nnz == 0
    assert "scgpt_binning" in mdata["rna"].uns
    _assert_same(before, _others(mdata))


# --------------------------------------------------------------------------------------------------- baselines


def test_baselines(mdata):
    before = _others(mdata)
    plain = _rna_copy(mdata)
    fm.tl.baselines(mdata, ["random", "pca"], n_comps=10, mod="rna")
    fm.tl.baselines(plain, ["random", "pca"], n_comps=10)
    for key in ("X_random", "X_pca"):
        np.testing.assert_allclose(mdata["rna"].obsm[key], plain.obsm[key], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(mdata.obsm[f"rna:{key}"], mdata["rna"].obsm[key])
    _assert_same(before, _others(mdata))


# ------------------------------------------------------------------------------------------------------ metrics


def test_metrics_integration_and_label_transfer(cite_base):
    # scib-metrics needs more than 90 neighbours: all 400 cells, the labels of the fixture where known
    cite = fm.datasets.pbmc_cite_mudata()
    labels = cite_base["rna"].obs["label"].reindex(cite.obs_names).astype(object).fillna("unlabelled").astype(str)
    cite["rna"].obs["label"] = pd.Categorical(labels)
    fm.tl.baselines(cite, ["pca"], n_comps=10, mod="rna")
    before = _others(cite)
    from scib_metrics.benchmark import BatchCorrection, BioConservation

    light = {
        "bio_metrics": BioConservation(
            isolated_labels=False,
            nmi_ari_cluster_labels_leiden=False,
            nmi_ari_cluster_labels_kmeans=False,
            clisi_knn=False,
        ),
        "batch_metrics": BatchCorrection(bras=False, ilisi_knn=False, kbet_per_label=False, pcr_comparison=False),
        "batch_key": "batch",
        "label_key": "label",
        "baselines": ("random",),
        "neighbors": "exact",
    }
    res = fm.metrics.integration(cite, ["X_pca"], mod="rna", **light)
    plain = fm.metrics.integration(_rna_copy(cite), ["X_pca"], **light)
    pd.testing.assert_frame_equal(res, plain)
    assert set(res["embedding"]) == {"X_pca", "Random (floor)"}
    # the MuData's own obsm (mirrored modality embeddings, joint embeddings) with mod=None
    cite.obs["label"] = cite["rna"].obs["label"].reindex(cite.obs_names)
    with pytest.raises(ValueError, match="pre_integrated_key"):
        fm.metrics.integration(cite, ["rna:X_pca"], mod=None, **light)
    joint = fm.metrics.integration(cite, ["rna:X_pca"], mod=None, pre_integrated_key="rna:X_pca", **light)
    same = joint[joint.embedding == "rna:X_pca"].drop(columns="embedding").reset_index(drop=True)
    want = res[res.embedding == "X_pca"].drop(columns="embedding").reset_index(drop=True)
    pd.testing.assert_frame_equal(same, want)
    del cite.obs["label"]
    cite["rna"].obs["pred"] = cite["rna"].obs["label"].astype(str)
    lt = fm.metrics.label_transfer(cite, "label", "pred", mod="rna")
    assert lt.set_index("metric").loc["accuracy", "value"] == 1.0
    _assert_same(before, _others(cite))


def test_map_to_reference(cite):
    ref = cite[cite.obs["batch"] == "pbmc10k"].copy()
    query = cite[cite.obs["batch"] == "pbmc5k"].copy()
    before = _others(query)
    fm.tl.map_to_reference(query, ref, label_key="label", model="pca", n_comps=10, k=5, mod="rna")
    rna = query["rna"]
    assert {"label_pred", "label_uncertainty"} <= set(rna.obs.columns)
    assert "X_pca_ref" in rna.obsm and "rna:X_pca_ref" in query.obsm
    _assert_same(before, _others(query))


# ------------------------------------------------------------------------------------------------- perturbation


def test_perturbation_functions(papalexi):
    before = _others(papalexi)
    pb = fm.pp.pseudobulk_perturbations(papalexi, perturbation_key="target", control="non-targeting", mod="rna")
    pb_plain = fm.pp.pseudobulk_perturbations(_rna_copy(papalexi), perturbation_key="target", control="non-targeting")
    np.testing.assert_allclose(pb.X, pb_plain.X)
    res = fm.tl.benchmark_perturbation(
        papalexi, methods=("control", "mean"), seeds=[0], perturbation_key="target", control="non-targeting", mod="rna"
    )
    res_plain = fm.tl.benchmark_perturbation(
        _rna_copy(papalexi), methods=("control", "mean"), seeds=[0], perturbation_key="target", control="non-targeting"
    )
    pd.testing.assert_frame_equal(res, res_plain)
    _assert_same(before, _others(papalexi))

    fm.pp.split_perturbations(pb, rng=0)
    pmd = md.MuData({"rna": pb})
    fm.tl.predict_perturbation(pmd, method="mean", mod="rna")
    assert "pred_mean" in pmd["rna"].layers


# ------------------------------------------------------------------------------------- joint embeddings (own code)


def test_pbmc_cite_mudata():
    mdata = fm.datasets.pbmc_cite_mudata()
    assert set(mdata.mod) == {"rna", "protein"}
    assert mdata.n_obs == 400
    assert mdata.obs["batch"].value_counts().to_dict() == {"pbmc10k": 200, "pbmc5k": 200}
    prot = mdata["protein"]
    assert prot.n_vars == 14 and "CD14_TotalSeqB" in prot.var_names and "CD14" in set(prot.var["protein"])
    assert mdata.var_names.is_unique
    raw = fm.datasets.pbmc_cite("5k")
    names = [str(n) for n in raw.uns["protein_names"]]
    col = names.index("CD14_TotalSeqB")
    got = np.asarray(prot[mdata.obs["batch"] == "pbmc5k", "CD14_TotalSeqB"].X).ravel()
    np.testing.assert_array_equal(got, np.asarray(raw.obsm["protein_expression"])[:, col])
    X = mdata["rna"].X
    vals = X.data if sparse.issparse(X) else np.asarray(X)
    assert np.all(vals == np.round(vals))
    outer = fm.datasets.pbmc_cite_mudata(join="outer")
    assert outer["protein"].n_vars == 29
    with pytest.raises(ValueError, match="join"):
        fm.datasets.pbmc_cite_mudata(join="left")


def test_modality_embedding_protein_matches_muon(cite):
    import muon as mu
    import scanpy as sc

    counts = cite["protein"].X.copy()
    key = fm.tl.modality_embedding(cite, "protein", n_comps=5, rng=0)
    assert key == "X_pca"
    prot = cite["protein"]
    np.testing.assert_array_equal(prot.X, counts)  # counts untouched
    ref = ad.AnnData(X=np.asarray(counts, dtype=np.float32))
    mu.prot.pp.clr(ref)
    np.testing.assert_allclose(prot.layers["clr"], ref.X, rtol=1e-5)
    sc.pp.pca(ref, n_comps=5, random_state=0)
    np.testing.assert_allclose(np.abs(prot.obsm["X_pca"]), np.abs(ref.obsm["X_pca"]), rtol=1e-3, atol=1e-4)
    assert "X_pca" not in cite["rna"].obsm


def test_modality_embedding_atac(multiome):
    import muon as mu

    counts = multiome["atac"].X.copy()
    key = fm.tl.modality_embedding(multiome, "atac", n_comps=8, rng=0)
    atac = multiome["atac"]
    assert key == "X_lsi" and atac.obsm["X_lsi"].shape == (multiome.n_obs, 8)
    assert (atac.X != counts).nnz == 0
    ref = ad.AnnData(X=counts.astype(np.float32))
    mu.atac.pp.tfidf(ref, scale_factor=1e4)
    np.testing.assert_allclose(atac.layers["tfidf"].toarray(), ref.X.toarray(), rtol=1e-5)
    assert {"LSI"} <= set(atac.varm) and "stdev" in atac.uns["lsi"]
    # cells without ATAC counts: a clear error and nothing written
    empty = multiome.copy()
    dense = empty["atac"].X.toarray()
    dense[0, :] = 0
    empty["atac"].X = sparse.csr_matrix(dense)
    del empty["atac"].obsm["X_lsi"]
    with pytest.raises(ValueError, match="no counts"):
        fm.tl.modality_embedding(empty, "atac")
    assert "X_lsi" not in empty["atac"].obsm


def test_joint_embedding_concat_by_hand(cite):
    fm.tl.baselines(cite, ["pca"], n_comps=10, mod="rna")
    rna_before = cite["rna"].X.copy()
    fm.tl.joint_embedding(cite, rna_key="X_pca", other="protein", method="concat", n_comps=5, weights=(1.0, 2.0), rng=0)
    joint = cite.obsm["X_concat"]
    assert joint.shape == (cite.n_obs, 15) and joint.dtype == np.float32

    def z(X):
        X = np.asarray(X, dtype=np.float64)
        return (X - X.mean(0)) / X.std(0) / np.sqrt(X.shape[1])

    expected = np.hstack([z(cite["rna"].obsm["X_pca"]), 2.0 * z(cite["protein"].obsm["X_pca"])])
    np.testing.assert_allclose(joint, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(joint[:, :10].var(0).sum(), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(cite.obsm["protein:X_pca"], cite["protein"].obsm["X_pca"])
    assert cite.uns["concat"]["params"]["rna_key"] == "X_pca"
    assert (cite["rna"].X != rna_before).nnz == 0
    # an existing other embedding is used as it is (and protein X is not recomputed)
    fm.tl.joint_embedding(cite, rna_key="X_pca", other="protein", other_key="X_pca", method="concat", key_added="X_c2")
    np.testing.assert_allclose(cite.obsm["X_c2"], expected / np.array([1.0] * 10 + [2.0] * 5), rtol=1e-4, atol=1e-5)


def test_joint_embedding_errors(cite):
    with pytest.raises(KeyError, match="fm.tl.embed"):
        fm.tl.joint_embedding(cite, rna_key="X_geneformer", other="protein")
    fm.tl.baselines(cite, ["random"], n_comps=5, mod="rna")
    with pytest.raises(TypeError, match="MuData"):
        fm.tl.joint_embedding(cite["rna"], rna_key="X_random")
    with pytest.raises(ValueError, match="method"):
        fm.tl.joint_embedding(cite, rna_key="X_random", method="mofa")
    with pytest.raises(KeyError, match="not in this MuData"):
        fm.tl.joint_embedding(cite, rna_key="X_random", other="atac")
    cite.mod["prot2"] = cite["protein"].copy()
    with pytest.raises(ValueError, match="kind="):
        fm.tl.joint_embedding(cite, rna_key="X_random", other="prot2")
    cite.mod.pop("prot2")
    part = md.MuData({"rna": cite["rna"].copy(), "protein": cite["protein"][:50].copy()})
    with pytest.raises(ValueError, match="intersect_obs"):
        fm.tl.joint_embedding(part, rna_key="X_random")
    with pytest.raises(ValueError, match="WNN needs more cells"):
        fm.tl.joint_embedding(cite[:12].copy(), rna_key="X_random", n_neighbors=15)
    assert "X_wnn" not in cite.obsm and "X_pca" not in cite["protein"].obsm


@pytest.mark.slow
def test_joint_embedding_wnn(multiome, gf_tiny):
    """muon's WNN on a Geneformer (random-weight) RNA embedding + ATAC LSI; numba compiles muon's kernels once.

    120 cells: fewer than muon's default 200 candidate neighbours, which crashed scipy before they were capped.
    """
    fm.tl.embed(multiome, gf_tiny, mod="rna", batch_size=64)
    fm.tl.joint_embedding(multiome, rna_key="X_geneformer", other="atac", method="wnn", n_comps=10, n_neighbors=10)
    n = multiome.n_obs
    assert multiome.obsm["X_wnn"].shape == (n, 10)
    assert np.isfinite(multiome.obsm["X_wnn"]).all()
    conn = multiome.obsp["wnn_connectivities"]
    assert conn.shape == (n, n) and abs(conn - conn.T).max() < 1e-6
    w = multiome.obs[["rna:mod_weight", "atac:mod_weight"]].to_numpy()
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    assert multiome.uns["wnn_neighbors"]["connectivities_key"] == "wnn_connectivities"
    for m in ("rna", "atac"):
        assert f"wnn_{m}" in multiome[m].uns and f"wnn_{m}_connectivities" in multiome[m].obsp
    assert "X_lsi" in multiome["atac"].obsm and "atac:X_lsi" in multiome.obsm
    assert "X_lsi_no1" not in multiome["atac"].obsm  # the temporary view is removed


def test_diffusion_map_by_hand():
    from scfmkit.tl._multimodal import _diffusion_map

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (30, 3)), rng.normal(6, 1, (30, 3))])
    d2 = ((X[:, None] - X[None]) ** 2).sum(-1)
    W = np.exp(-d2 / 4)
    np.fill_diagonal(W, 0)
    emb = _diffusion_map(sparse.csr_matrix(W), 4, 0)
    # the transition matrix P = D^-1 W: right eigenvectors, largest eigenvalues first, trivial one dropped
    P = W / W.sum(1, keepdims=True)
    vals, vecs = np.linalg.eig(P)
    order = np.argsort(-vals.real)
    vals, vecs = vals.real[order], vecs.real[:, order]
    for j in range(4):
        ref = vecs[:, j + 1] * vals[j + 1]
        got = emb[:, j]
        ref = ref / np.linalg.norm(ref) * np.sign(ref[np.abs(ref).argmax()])
        np.testing.assert_allclose(got / np.linalg.norm(got), ref, atol=1e-4)
    # eigenvalue-scaled: the columns' diffusion weights decrease
    assert np.linalg.norm(emb[:, 0]) > 0
    np.testing.assert_array_equal(_diffusion_map(sparse.csr_matrix(W), 4, 0), emb)  # deterministic
