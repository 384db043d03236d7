"""fm.tl.finetune / annotate / benchmark_annotation on tiny random-weight checkpoints (random-weight controls)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

import scfmkit as fm

GF = {"epochs": 1, "batch_size": 12, "input": "lognorm", "label_key": "cell_type_broad"}


def _snapshot(adata):
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return X.copy(), adata.obs.copy(), sorted(adata.obsm), sorted(adata.uns), adata.var_names.copy()


def _assert_same(adata, snap):
    X, obs, obsm, uns, var = snap
    now = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    np.testing.assert_array_equal(now, X)
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert sorted(adata.obsm) == obsm and sorted(adata.uns) == uns and adata.var_names.equals(var)


@pytest.fixture(scope="module")
def gf(gf_small_dir):
    return fm.models.load(gf_small_dir)


@pytest.fixture(scope="module")
def gf_clf(gf, pbmc_split):
    train, _ = pbmc_split
    return fm.tl.finetune(train, gf, rng=0, **GF)


def test_finetune_geneformer(gf_clf, pbmc_split):
    train, _ = pbmc_split
    assert gf_clf.family == "geneformer"
    assert gf_clf.labels == sorted(set(train.obs["cell_type_broad"].astype(str))) or set(gf_clf.labels) == set(
        train.obs["cell_type_broad"].astype(str)
    )
    assert len(gf_clf.history) == 1
    h = gf_clf.history[0]
    assert {"train_loss", "val_loss", "val_accuracy", "val_macro_f1", "cells_per_s"} <= set(h)
    assert gf_clf.params["n_train"] + gf_clf.params["n_validation"] == train.n_obs
    assert gf_clf.params["n_validation"] == round(0.1 * train.n_obs)  # validation=0.1
    assert gf_clf.params["train"]["learning_rate"] == 5e-5  # Geneformer Classifier default


def test_reproducible_on_cpu(gf, gf_clf, pbmc_split):
    """Same data + rng -> identical weights; another rng -> other weights; the model's own weights untouched."""
    train, _ = pbmc_split
    before = {k: v.clone() for k, v in gf._state_dict.items()}
    again = fm.tl.finetune(train, gf, rng=0, **GF)
    other = fm.tl.finetune(train, gf, rng=1, **GF)
    a, b, c = (x.net.state_dict() for x in (gf_clf, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert all(torch.equal(before[k], gf._state_dict[k]) for k in before)


def test_inputs_untouched(gf, pbmc_split):
    train, _ = pbmc_split
    work = train.copy()
    snap = _snapshot(work)
    fm.tl.finetune(work, gf, rng=0, validation=0.0, **GF)
    _assert_same(work, snap)


def test_annotate_save_load(gf_clf, pbmc_split, tmp_path):
    _, query = pbmc_split
    q = query.copy()
    fm.tl.annotate(q, model=gf_clf)
    p = q.obsm["cell_type_broad_proba"]
    assert p.shape == (q.n_obs, len(gf_clf.labels)) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(q.obs["cell_type_broad_uncertainty"], 1 - p.max(1), atol=1e-6)
    assert list(q.obs["cell_type_broad_pred"].cat.categories) == gf_clf.labels
    params = q.uns["cell_type_broad_annotate"]["params"]
    assert params["labels"] == gf_clf.labels and params["tokenize"]["input"] == "lognorm"
    q.write_h5ad(tmp_path / "q.h5ad")  # h5ad-writable
    folder = gf_clf.save(tmp_path / "clf")
    q2 = query.copy()
    fm.tl.annotate(q2, model=folder, key_added="again")  # from the folder: options and labels come back
    np.testing.assert_allclose(q2.obsm["again_proba"], p, atol=1e-6)
    loaded = fm.tl.load_classifier(folder)
    assert loaded.labels == gf_clf.labels and loaded.history == gf_clf.history
    np.testing.assert_array_equal(q2.obs["again_pred"].astype(str), q.obs["cell_type_broad_pred"].astype(str))


def test_annotate_threshold(gf_clf, pbmc_split):
    _, query = pbmc_split
    q = query.copy()
    fm.tl.annotate(q, model=gf_clf, uncertainty_threshold=0.0, key_added="t")
    assert (q.obs["t_pred"] == "Unknown").all()  # every cell has uncertainty > 0


def test_validation_by_group_freeze_and_weights(gf, pbmc_split):
    train, _ = pbmc_split
    clf = fm.tl.finetune(
        train,
        gf,
        rng=0,
        validation_key="donor",
        validation_groups=["3pv1"],
        freeze_layers=1,
        class_weights="balanced",
        **GF,
    )
    assert clf.params["n_validation"] == int((train.obs["donor"] == "3pv1").sum())
    start = gf.classification_head(len(clf.labels), seed=0)
    a, b = start.encoder.layers[0].state_dict(), clf.net.encoder.layers[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # frozen
    assert not torch.equal(start.encoder.layers[1].qkv.weight, clf.net.encoder.layers[1].qkv.weight)
    assert len(clf.params["train"]["class_weights"]) == len(clf.labels)


def test_early_stopping(gf, pbmc_split):
    train, _ = pbmc_split
    clf = fm.tl.finetune(
        train, gf, rng=0, patience=1, learning_rate=5.0, train_options={"schedule": "constant"}, **{**GF, "epochs": 4}
    )
    assert len(clf.history) <= 4
    assert sum(r.get("best", 0) for r in clf.history) == 1


def test_random_init_differs(gf, gf_clf, pbmc_split):
    train, _ = pbmc_split
    rand = fm.tl.finetune(train, gf, rng=0, init="random", **GF)
    assert rand.params["init"] == "random"
    assert not torch.equal(rand.net.encoder.word.weight, gf_clf.net.encoder.word.weight)


# ------------------------------------------------------------------ scGPT


def test_finetune_scgpt(scgpt_small_dir, pbmc_split, tmp_path):
    train, query = pbmc_split
    model = fm.models.load(scgpt_small_dir)
    clf = fm.tl.finetune(train, model, label_key="cell_type_broad", epochs=1, max_length=32, rng=0)
    again = fm.tl.finetune(train, model, label_key="cell_type_broad", epochs=1, max_length=32, rng=0)
    a, b = clf.net.state_dict(), again.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert clf.params["train"]["learning_rate"] == 1e-4 and clf.params["train"]["schedule"] == "step"
    assert clf.params["train"]["batch_size"] == 32
    assert any(k.startswith("cls_decoder._decoder.") for k in clf.net.state_dict_reference())
    q = query.copy()
    fm.tl.annotate(q, model=clf)
    folder = clf.save(tmp_path / "scgpt_clf")
    q2 = query.copy()
    fm.tl.annotate(q2, model=folder)
    np.testing.assert_allclose(q2.obsm["cell_type_broad_proba"], q.obsm["cell_type_broad_proba"], atol=1e-6)


# ------------------------------------------------------------------ bad input


def test_single_cell_label_refused(gf, pbmc_split):
    train, _ = pbmc_split
    work = train.copy()
    work.obs["lab"] = work.obs["cell_type_broad"].astype(str)
    work.obs.iloc[0, work.obs.columns.get_loc("lab")] = "lonely"
    snap = _snapshot(work)
    with pytest.raises(ValueError, match=r"fewer than 2 cells: \['lonely'\].*min_cells_per_label=1"):
        fm.tl.finetune(work, gf, **{**GF, "label_key": "lab"})
    _assert_same(work, snap)
    clf = fm.tl.finetune(work, gf, min_cells_per_label=1, **{**GF, "label_key": "lab"})
    assert "lonely" in clf.labels


def test_nan_labels_left_out(gf, pbmc_split):
    train, _ = pbmc_split
    work = train.copy()
    work.obs["lab"] = work.obs["cell_type_broad"].astype(object)
    work.obs.loc[work.obs_names[:10], "lab"] = np.nan
    snap = _snapshot(work)
    clf = fm.tl.finetune(work, gf, **{**GF, "label_key": "lab"})
    assert clf.params["n_train"] + clf.params["n_validation"] == work.n_obs - 10
    assert "nan" not in clf.labels
    _assert_same(work, snap)
    work.obs["lab"] = np.nan
    with pytest.raises(ValueError, match="no labels"):
        fm.tl.finetune(work, gf, **{**GF, "label_key": "lab"})
    with pytest.raises(KeyError, match="not an obs column"):
        fm.tl.finetune(work, gf, **{**GF, "label_key": "nope"})


def test_query_without_model_genes(gf_clf, pbmc_split):
    _, query = pbmc_split
    q = query.copy()
    q.var_names = [f"gene{i}" for i in range(q.n_vars)]
    snap = _snapshot(q)
    with pytest.raises(ValueError, match="None of the .* genes match"):
        fm.tl.annotate(q, model=gf_clf)
    _assert_same(q, snap)


def test_query_labels_not_in_training(gf_clf, pbmc_split, caplog):
    _, query = pbmc_split
    q = query.copy()
    q.obs["cell_type_broad"] = q.obs["cell_type_broad"].astype(str)
    q.obs.iloc[:3, q.obs.columns.get_loc("cell_type_broad")] = "NewType"
    with caplog.at_level(logging.WARNING, logger="scfmkit"):
        fm.tl.annotate(q, model=gf_clf)
    assert "not trained on" in caplog.text and "NewType" in caplog.text
    assert "NewType" not in set(q.obs["cell_type_broad_pred"].astype(str))


def test_bad_options(gf, pbmc_split):
    train, _ = pbmc_split
    with pytest.raises(ValueError, match="`validation` must be"):
        fm.tl.finetune(train, gf, validation=1.5, **GF)
    with pytest.raises(ValueError, match="validation_groups"):
        fm.tl.finetune(train, gf, validation_key="donor", validation_groups=["3pv1", "3pv2"], **GF)
    with pytest.raises(ValueError, match="freeze_layers"):
        fm.tl.finetune(train, gf, freeze_layers=5, **GF)
    with pytest.raises(ValueError, match="class_weights"):
        fm.tl.finetune(train, gf, class_weights="heavy", **GF)
    with pytest.raises(TypeError, match="train_options"):
        fm.tl.finetune(train, gf, train_options={"momentum": 0.9}, **GF)
    with pytest.raises(ValueError, match="`init`"):
        fm.tl.finetune(train, gf, init="imagenet", **GF)


# ------------------------------------------------------------------ mapping and the baselines table


def test_map_to_reference_finetune(gf, gf_clf, pbmc_split):
    train, query = pbmc_split
    q = query.copy()
    fm.tl.map_to_reference(q, train, label_key="cell_type_broad", model=gf_clf, method="finetune", input="lognorm")
    assert q.uns["map_to_reference"]["params"]["space"] == "finetune"
    assert q.obsm["cell_type_broad_proba"].shape == (q.n_obs, len(gf_clf.labels))
    q2 = query.copy()
    fm.tl.map_to_reference(
        q2, train, label_key="cell_type_broad", model=gf, method="finetune", input="lognorm", epochs=1, rng=0
    )
    np.testing.assert_allclose(q2.obsm["cell_type_broad_proba"], q.obsm["cell_type_broad_proba"], atol=1e-6)
    with pytest.raises(ValueError, match="needs `model=`"):
        fm.tl.map_to_reference(q2, train, label_key="cell_type_broad", use_rep="X_pca", method="finetune")


def test_benchmark_annotation_table(gf, pbmc_split):
    train, query = pbmc_split
    snap_r, snap_q = _snapshot(train), _snapshot(query)
    table = fm.tl.benchmark_annotation(
        train,
        query,
        gf,
        label_key="cell_type_broad",
        seeds=(0,),
        n_comps=10,
        n_hvg=500,
        finetune_options={"epochs": 1},
        input="lognorm",
    )
    assert list(table.columns) == ["method", "seed", "metric", "label", "value"]
    assert set(table["method"]) == set(fm.tl._annotation_benchmark.ANNOTATION_METHODS)
    assert {"accuracy", "macro_f1", "f1", "seconds"} <= set(table["metric"])
    acc = table[table.metric == "accuracy"].set_index("method")["value"]
    assert ((acc >= 0) & (acc <= 1)).all()
    _assert_same(train, snap_r)
    _assert_same(query, snap_q)
    with pytest.raises(ValueError, match="Unknown methods"):
        fm.tl.benchmark_annotation(train, query, gf, label_key="cell_type_broad", methods=["svm"])
