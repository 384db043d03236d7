"""The linear model with pretrained gene embeddings as the paper ran it (P from the training-data PCA).

Reference: const-ae/linear_perturbation_prediction-Paper @ 092743c, ``benchmark/src/run_linear_pretrained_model.R``
with ``--gene_embedding <file> --pert_embedding training_data``. R is not installed: its formulas are re-implemented
here in numpy line by line (``prcomp_irlba`` on the training pseudobulk genes x conditions with ``center=TRUE``,
``pert_emb <- t(pca$x)`` so a condition's vector is its gene's PCA row, ``ctrl`` a zero column, ``solve_y_axb``).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scfmkit as fm

GENES = [f"g{i}" for i in range(40)]
TRAIN = ["control", "g1", "g2", "g3", "g4", "g6", "g7"]
TEST = ["g5", "g8"]


@pytest.fixture
def pb():
    rng = np.random.default_rng(0)
    labels = ["control", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "XX"]
    lab = np.repeat(labels, 8)
    X = rng.poisson(2, size=(len(lab), len(GENES))).astype(np.float32)
    for i in range(1, 9):
        hit = lab == f"g{i}"
        X[hit, i] += 20
        X[hit, 10 + i] += 5 * i
    a = ad.AnnData(X)
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.var_names = GENES
    a.obs["condition"] = pd.Categorical(lab)
    return fm.pp.pseudobulk_perturbations(a, n_top_de=0)


@pytest.fixture
def pretrained():
    rng = np.random.default_rng(1)
    # rows for most measured genes (g39 missing) plus genes that are not measured
    names = GENES[:-1] + ["NOTMEASURED1", "NOTMEASURED2"]
    return pd.DataFrame(rng.normal(size=(len(names), 6)), index=names)


def _r_reference(pb, emb: pd.DataFrame, pca_dim: int, ridge: float, conds: list[str]) -> pd.DataFrame:
    genes = list(pb.var_names)
    X_train = pb[TRAIN].X.T.astype(np.float64)  # assay(train_data, "X"): genes x conditions
    baseline = pb.var["control_mean"].to_numpy()
    change = (pb.X - baseline).T  # assay(psce, "change")
    # pca <- prcomp_irlba(X, n = pca_dim); pca$x = centred X %*% rotation (rows: genes)
    Xc = X_train - X_train.mean(0, keepdims=True)
    evals, evecs = np.linalg.eigh(Xc.T @ Xc)
    rotation = evecs[:, np.argsort(evals)[::-1][:pca_dim]]
    pca_x = pd.DataFrame(Xc @ rotation, index=genes)
    pert_emb = pca_x.T  # t(pca$x): pca_dim x genes, colnames = gene names
    pert_emb["control"] = 0.0  # cbind(pert_emb, ctrl = 0)
    train_clean = TRAIN
    pert_matches = [c for c in pert_emb.columns if c in train_clean]  # columns that name a training condition
    gene_matches = [g for g in emb.index if g in genes]
    A = emb.loc[gene_matches].to_numpy()
    B = pert_emb[pert_matches].to_numpy()
    cols = [list(pb.obs_names).index(c) for c in pert_matches]
    rows = [genes.index(g) for g in gene_matches]
    Y = change[np.ix_(rows, cols)]
    center = Y.mean(1)
    Yc = Y - center[:, None]
    K = (
        np.linalg.inv(A.T @ A + np.eye(A.shape[1]) * ridge)
        @ A.T
        @ Yc
        @ B.T
        @ np.linalg.inv(B @ B.T + np.eye(B.shape[0]) * ridge)
    )
    B_all = pert_emb[conds].to_numpy()
    pred = A @ K @ B_all + center[:, None] + baseline[rows][:, None]
    return pd.DataFrame(pred.T, index=conds, columns=gene_matches)


def test_pca_genes_is_the_paper_formula(pb, pretrained):
    lin = fm.tl.fit_predictor(
        pb, "linear", train=TRAIN, gene_embedding=pretrained, perturbation_embedding="pca_genes", n_components=4
    )
    conds = TEST + ["g1"]
    ours = lin.predict(conds)
    ref = _r_reference(pb, pretrained, 4, 0.1, conds)
    np.testing.assert_allclose(ours[ref.columns].to_numpy(), ref.to_numpy(), rtol=1e-8, atol=1e-10)
    # a perturbed gene that is not measured has no PCA row: refused, as R's NA prediction
    assert "not measured" in lin.why_not("NOTMEASURED1")


def test_genes_mode_with_pretrained_rows_differs(pb, pretrained):
    """``perturbation_embedding='genes'`` with a pretrained G takes P from the pretrained rows: not the paper's."""
    kw = {"train": TRAIN, "gene_embedding": pretrained, "n_components": 4}
    a = fm.tl.fit_predictor(pb, "linear", perturbation_embedding="genes", **kw).predict(TEST)
    b = fm.tl.fit_predictor(pb, "linear", perturbation_embedding="pca_genes", **kw).predict(TEST)
    assert not np.allclose(a.to_numpy(), b.to_numpy())


def test_pca_genes_equals_genes_for_the_pca_embedding(pb):
    kw = {"train": TRAIN, "gene_embedding": "pca", "n_components": 4}
    a = fm.tl.fit_predictor(pb, "linear", perturbation_embedding="genes", **kw).predict(TEST)
    b = fm.tl.fit_predictor(pb, "linear", perturbation_embedding="pca_genes", **kw).predict(TEST)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-10, atol=1e-12)


def test_pca_reference_matches_r_formula(pb):
    """The default model (PCA for both G and P) against the same R formulas."""
    emb_pca = fm.tl.fit_predictor(pb, "linear", train=TRAIN, n_components=4)
    G = emb_pca.gene_table  # the training PCA gene scores (genes x 4)
    ref = _r_reference(pb, G, 4, 0.1, TEST)
    np.testing.assert_allclose(emb_pca.predict(TEST)[ref.columns].to_numpy(), ref.to_numpy(), rtol=1e-8, atol=1e-10)
