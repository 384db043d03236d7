"""The issue's bad-input list for fm.tl.finetune, annotate, benchmark_annotation and map_to_reference(finetune).

A label with a single cell, NaN labels, a query without the model's genes and a label set that differs between
training and query: each gets a clear error or documented handling, and the caller's data stay untouched. Tiny
random-weight checkpoints (random-weight controls).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import scfmkit as fm

from .test_finetune import _assert_same, _snapshot

GF = {"epochs": 1, "batch_size": 12, "input": "lognorm"}
BENCH = {"seeds": (0,), "n_comps": 5, "n_hvg": 300, "finetune_options": {"epochs": 1}, "input": "lognorm"}


@pytest.fixture(scope="module")
def gf(gf_small_dir):
    return fm.models.load(gf_small_dir)


@pytest.fixture(scope="module")
def scgpt_clf(scgpt_small_dir, pbmc_split):
    train, _ = pbmc_split
    return fm.tl.finetune(
        train, fm.models.load(scgpt_small_dir), label_key="cell_type_broad", epochs=1, max_length=32, rng=0
    )


def _no_model_genes(adata):
    out = adata.copy()
    out.var_names = [f"gene{i}" for i in range(out.n_vars)]
    return out


def test_single_cell_label_refused_by_benchmark(gf, pbmc_split):
    train, query = pbmc_split
    work = train.copy()
    work.obs["lab"] = work.obs["cell_type_broad"].astype(str)
    work.obs.iloc[0, work.obs.columns.get_loc("lab")] = "lonely"
    q = query.copy()
    q.obs["lab"] = q.obs["cell_type_broad"].astype(str)
    snaps = _snapshot(work), _snapshot(q)
    with pytest.raises(ValueError, match=r"fewer than 2 cells: \['lonely'\]"):
        fm.tl.benchmark_annotation(work, q, gf, label_key="lab", methods=("finetune",), **BENCH)
    _assert_same(work, snaps[0])
    _assert_same(q, snaps[1])


def test_single_cell_label_in_validation_only_warns(gf, pbmc_split, caplog):
    """With ``min_cells_per_label=1`` a singleton may land in the validation cells: a warning names it."""
    train, _ = pbmc_split
    work = train.copy()
    work.obs["lab"] = work.obs["cell_type_broad"].astype(str)
    # the cells the seeded split holds out (validation=0.1, rng=0: the first draw of default_rng(0))
    held = np.random.default_rng(0).permutation(work.n_obs)[: round(0.1 * work.n_obs)]
    work.obs.iloc[held[0], work.obs.columns.get_loc("lab")] = "lonely"
    with caplog.at_level(logging.WARNING, logger="scfmkit"):
        clf = fm.tl.finetune(work, gf, label_key="lab", min_cells_per_label=1, rng=0, **GF)
    assert "no training cells" in caplog.text and "lonely" in caplog.text
    assert "lonely" in clf.labels and clf.params["n_validation"] == len(held)


def test_nan_labels_in_benchmark_left_out(gf, pbmc_split):
    train, query = pbmc_split
    r, q = train.copy(), query.copy()
    for a, n in ((r, 6), (q, 4)):
        a.obs["lab"] = a.obs["cell_type_broad"].astype(object)
        a.obs.loc[a.obs_names[:n], "lab"] = np.nan
    snaps = _snapshot(r), _snapshot(q)
    table = fm.tl.benchmark_annotation(r, q, gf, label_key="lab", methods=("finetune", "pca_knn"), **BENCH)
    _assert_same(r, snaps[0])
    _assert_same(q, snaps[1])
    assert np.isfinite(table["value"]).all()
    assert "nan" not in set(table["label"])
    q.obs["lab"] = np.nan
    with pytest.raises(ValueError, match="no labels"):
        fm.tl.benchmark_annotation(r, q, gf, label_key="lab", methods=("pca_knn",), **BENCH)


def test_nan_labels_in_annotated_query(gf, pbmc_split):
    """``annotate`` labels every cell, also those whose (unused) label is missing."""
    train, query = pbmc_split
    clf = fm.tl.finetune(train, gf, label_key="cell_type_broad", rng=0, **GF)
    q = query.copy()
    q.obs["cell_type_broad"] = q.obs["cell_type_broad"].astype(object)
    q.obs.loc[q.obs_names[:5], "cell_type_broad"] = np.nan
    fm.tl.annotate(q, model=clf)
    assert q.obs["cell_type_broad_pred"].notna().all()
    assert set(q.obs["cell_type_broad_pred"].astype(str)) <= set(clf.labels)


def test_training_cells_without_model_genes(gf, scgpt_small_dir, pbmc_split):
    train, _ = pbmc_split
    bad = _no_model_genes(train)
    snap = _snapshot(bad)
    with pytest.raises(ValueError, match="None of the .* genes match"):
        fm.tl.finetune(bad, gf, label_key="cell_type_broad", **GF)
    with pytest.raises(ValueError, match="gene"):
        fm.tl.finetune(bad, fm.models.load(scgpt_small_dir), label_key="cell_type_broad", epochs=1, max_length=32)
    _assert_same(bad, snap)


def test_scgpt_query_without_model_genes(scgpt_clf, pbmc_split):
    _, query = pbmc_split
    q = _no_model_genes(query)
    snap = _snapshot(q)
    with pytest.raises(ValueError, match="gene"):
        fm.tl.annotate(q, model=scgpt_clf)
    _assert_same(q, snap)


def test_benchmark_and_mapping_query_without_model_genes(gf, pbmc_split):
    train, query = pbmc_split
    q = _no_model_genes(query)
    snaps = _snapshot(train), _snapshot(q)
    with pytest.raises(ValueError, match="gene"):
        fm.tl.benchmark_annotation(train, q, gf, label_key="cell_type_broad", methods=("finetune",), **BENCH)
    with pytest.raises(ValueError, match="gene"):
        fm.tl.map_to_reference(
            q, train, label_key="cell_type_broad", model=gf, method="finetune", input="lognorm", epochs=1
        )
    _assert_same(train, snaps[0])
    _assert_same(q, snaps[1])


def test_label_sets_differ_in_benchmark(gf, pbmc_split, caplog):
    """Query labels unknown to the reference are warned about and scored as errors; reference-only labels are fine."""
    train, query = pbmc_split
    r, q = train.copy(), query.copy()
    r.obs["lab"] = r.obs["cell_type_broad"].astype(str)
    q.obs["lab"] = q.obs["cell_type_broad"].astype(str)
    q.obs.iloc[:3, q.obs.columns.get_loc("lab")] = "NewType"
    only_ref = sorted(set(r.obs["lab"]) - set(q.obs["lab"]))
    with caplog.at_level(logging.WARNING, logger="scfmkit"):
        table = fm.tl.benchmark_annotation(r, q, gf, label_key="lab", methods=("finetune", "pca_logreg"), **BENCH)
    assert "not in the reference" in caplog.text and "NewType" in caplog.text
    f1 = table[table.metric == "f1"].set_index(["method", "label"])["value"]
    assert (f1.xs("NewType", level="label") == 0).all()
    acc = table[table.metric == "accuracy"].set_index("method")["value"]
    assert (acc <= 1 - 3 / q.n_obs + 1e-12).all()
    for lab in only_ref:  # a reference label absent from the query has no per-class row to divide by zero
        assert lab not in set(table[table.metric == "f1"]["label"]) or np.isfinite(f1.xs(lab, level="label")).all()


def test_scgpt_query_labels_not_in_training(scgpt_clf, pbmc_split, caplog):
    _, query = pbmc_split
    q = query.copy()
    q.obs["cell_type_broad"] = q.obs["cell_type_broad"].astype(str)
    q.obs.iloc[:2, q.obs.columns.get_loc("cell_type_broad")] = "NewType"
    with caplog.at_level(logging.WARNING, logger="scfmkit"):
        fm.tl.annotate(q, model=scgpt_clf)
    assert "not trained on" in caplog.text and "NewType" in caplog.text
