from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scfmkit as fm
from scfmkit.metrics import _perturbation as M

# every expected value below is computed by hand in the comment next to it


def test_pearson_hand():
    # deviations [-1,0,1] and [-1,1,0]: sum of products 1, norms sqrt(2)*sqrt(2) = 2 -> 0.5
    assert M.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert M.pearson([1, 2, 3, 9], [1, 3, 2, -5], genes=[0, 1, 2]) == pytest.approx(0.5)
    assert M.pearson([1, 2, 3, 9], [1, 3, 2, -5], genes=np.array([True, True, True, False])) == pytest.approx(0.5)


def test_pearson_delta_hand():
    # deltas [1,3,5] and [0,4,2]: deviations [-2,0,2], [-2,2,0] -> 4 / (sqrt(8) sqrt(8)) = 0.5
    assert M.pearson_delta([2, 4, 6], [1, 5, 3], [1, 1, 1]) == pytest.approx(0.5)
    # a constant change (the control predictor) has no defined correlation
    assert np.isnan(M.pearson_delta([1, 2, 3], [3, 1, 2], [1, 2, 3]))
    # ... also when it is constant only up to rounding (mean of 0.1, 0.2, 0.7 vs its reference)
    ref = np.array([0.1, 0.2, 0.7]) / 3 * 3
    assert np.isnan(M.pearson_delta(ref + np.array([0, 1e-16, -1e-16]), [3, 1, 2], ref))
    assert np.isnan(M.spearman_delta(ref + np.array([0, 1e-16, -1e-16]), [3, 1, 2], ref))


def test_mse_l2_hand():
    # squared errors 0, 1, 1
    assert M.mse([1, 2, 3], [1, 3, 2]) == pytest.approx(2 / 3)
    assert M.l2_distance([1, 2, 3], [1, 3, 2]) == pytest.approx(np.sqrt(2))
    assert M.mse([1, 2, 3], [1, 3, 2], genes=[1]) == pytest.approx(1.0)


def test_direction_hand():
    # changes pred [1,-1,0], true [2,-2,0]: all signs agree
    assert M.direction_agreement([2, 0, 1], [3, -1, 1], [1, 1, 1]) == pytest.approx(1.0)
    # pred [1,1,0] vs true [1,-1,0]: 2 of 3 agree
    assert M.direction_agreement([2, 2, 1], [3, -1, 1], [1, 1, 1]) == pytest.approx(2 / 3)


def test_spearman_hand():
    # ranks [1,2,3,4] vs [1,3,2,4]: 1 - 6*2/(4*15) = 0.8
    assert M.spearman_delta([1, 2, 3, 4], [1, 3, 2, 4], [0, 0, 0, 0]) == pytest.approx(0.8)
    # ties get average ranks [1.5,1.5,3] vs [1,2,3]: 1.5 / sqrt(1.5*2) = sqrt(3)/2
    assert M.spearman_delta([1, 1, 2], [1, 2, 3], [0, 0, 0]) == pytest.approx(np.sqrt(3) / 2)


def test_centroid_accuracy_hand():
    true = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    pred = np.array([[1, 0], [0, 9], [5, 5]], dtype=float)
    # row 0: own distance 1, others 9 and 10.05 are farther -> 2/2
    # row 1: own distance 13.45, others 9 and 1 are closer -> 0/2
    # row 2: all three distances are 7.07: none strictly farther -> 0/2
    np.testing.assert_allclose(M.centroid_accuracy(pred, true), [1.0, 0.0, 0.0])
    assert np.isnan(M.centroid_accuracy(pred[:1], true[:1])).all()
    # one extra competitor [0, 8]: row 0 (own 1) -> 3/3; row 1 ([0,9], own 13.45) -> the extra (1) is closer: 0/3;
    # row 2 ([5,5], own 7.07): [0,8] is at sqrt(34) = 5.83, closer -> 0/3
    np.testing.assert_allclose(M.centroid_accuracy(pred, true, others=[[0, 8]]), [1.0, 0.0, 0.0])
    # a single prediction still has competitors when others are given: [1,0] vs own [0,0] (1) and [5,5] (6.4)
    np.testing.assert_allclose(M.centroid_accuracy(pred[:1], true[:1], others=[[5, 5]]), [1.0])


def test_top_expressed_hand():
    np.testing.assert_array_equal(M.top_expressed_genes([3, 1, 2, 3], n=2), [0, 3])
    assert len(M.top_expressed_genes([1, 2], n=1000)) == 2


def test_kernel_errors():
    with pytest.raises(ValueError, match="same shape"):
        M.pearson([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="1-D"):
        M.mse(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="same shape"):
        M.centroid_accuracy(np.ones((2, 3)), np.ones((3, 3)))


@pytest.fixture
def counts():
    rng = np.random.default_rng(0)
    import anndata as ad

    genes = [f"g{i}" for i in range(30)]
    labels = np.repeat(["control", "g1", "g2", "g1+g2"], 20)
    X = rng.poisson(3, size=(len(labels), len(genes))).astype(float)
    X[labels == "g1", 5] += 20
    X[labels == "g2", 6] += 20
    cells = ad.AnnData(X, obs=pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))]))
    cells.var_names = genes
    return cells


@pytest.fixture
def pdata(counts):
    return fm.pp.pseudobulk_perturbations(counts, n_top_de=5)


def test_wrapper_perfect_prediction(pdata):
    conds = ["g1", "g2", "g1+g2"]
    truth = pd.DataFrame(pdata[conds].X, index=conds, columns=pdata.var_names)
    df = fm.metrics.perturbation_metrics(pdata, truth)
    assert list(df.columns) == ["condition", "metric", "value"]
    # without cells, every metric of the table except those that test cells
    table = fm.metrics.PERTURBATION_METRIC_TABLE
    assert set(df["metric"]) == {m for m in fm.metrics.PERTURBATION_METRICS if not table[m].needs_cells}
    v = df.set_index(["condition", "metric"])["value"]
    assert v[("g1", "pearson_delta")] == pytest.approx(1.0)
    assert v[("g1", "mse")] == pytest.approx(0.0)
    assert v[("g1", "direction_de")] == pytest.approx(1.0)
    assert v[("g1+g2", "centroid_accuracy")] == pytest.approx(1.0)
    assert v[("g2", "spearman_lfc_de")] == pytest.approx(1.0)


def test_wrapper_matches_kernels(pdata):
    conds = ["g1", "g2"]
    rng = np.random.default_rng(1)
    pred = pdata[conds].X + rng.normal(0, 0.1, size=(2, pdata.n_vars))
    df = fm.metrics.perturbation_metrics(pdata, pred, conditions=conds, metrics=["pearson_delta_de", "l2_top1000"])
    ctrl = pdata.var["control_mean"].to_numpy()
    de = pdata.var_names.get_indexer(pdata.uns["perturbation"]["top_de_genes"]["g2"])
    got = df.set_index(["condition", "metric"])["value"]
    assert got[("g2", "pearson_delta_de")] == pytest.approx(M.pearson_delta(pred[1], pdata["g2"].X[0], ctrl, genes=de))
    assert got[("g1", "l2_top1000")] == pytest.approx(M.l2_distance(pred[0], pdata["g1"].X[0]))


def test_wrapper_systema_reference(pdata):
    # the mean of the training perturbations IS the reference: no perturbation-specific change, NaN correlation
    train = ["g1", "g2"]
    mean_pred = pdata[train].X.mean(0)
    df = fm.metrics.perturbation_metrics(
        pdata, mean_pred[None, :], conditions=["g1+g2"], train=train, metrics=["pearson_delta_pert", "pearson_delta"]
    )
    v = df.set_index("metric")["value"]
    assert np.isnan(v["pearson_delta_pert"])
    assert np.isfinite(v["pearson_delta"])


def test_wrapper_errors(pdata):
    with pytest.raises(ValueError, match="Unknown metrics"):
        fm.metrics.perturbation_metrics(pdata, "delta", metrics=["nope"])
    with pytest.raises(KeyError, match="not found"):
        fm.metrics.perturbation_metrics(pdata, "nope")
    with pytest.raises(ValueError, match="conditions="):
        fm.metrics.perturbation_metrics(pdata, np.zeros((1, pdata.n_vars)))


def test_table_drives_the_loop(pdata, counts):
    # every metric of the table is scored, from the table's kernel; a perfect prediction of observed cells
    conds = ["g1", "g2", "g1+g2"]
    truth = pd.DataFrame(pdata[conds].X, index=conds, columns=pdata.var_names)
    df = fm.metrics.perturbation_metrics(pdata, truth, cells=counts)
    assert list(pd.unique(df["metric"])) == list(fm.metrics.PERTURBATION_METRICS)
    v = df.set_index(["condition", "metric"])["value"]
    assert v[("g1", "mae")] == pytest.approx(0.0)
    # panel of 3: every prediction is nearest to its own effect
    assert v[("g1", "discrimination_score_l1")] == 1.0
    assert v[("g1+g2", "discrimination_score_l1")] == 1.0
    assert df.attrs["n_true_de"]["g1"] >= 1  # gene 5 raised by 20 counts in all 20 cells
    tbl = fm.metrics.metric_table()
    assert list(tbl["metric"]) == list(fm.metrics.PERTURBATION_METRICS)
    assert set(tbl.columns) >= {"kernel", "genes", "level", "needs_cells", "higher_is_better"}


def test_cell_metrics_equal_the_kernels(pdata, counts):
    conds = ["g1", "g2", "g1+g2"]
    rng = np.random.default_rng(3)
    pred = np.clip(pdata[conds].X + rng.normal(0, 0.2, size=(3, pdata.n_vars)), 0, None)
    cs = fm.metrics.cell_set(counts, pdata)
    df = fm.metrics.perturbation_metrics(pdata, pred, conditions=conds, cells=cs, metrics=["overlap_at_N", "mae"])
    got = df.set_index(["condition", "metric"])["value"]
    for i, c in enumerate(conds):
        true_rank = cs.ranking(c)
        pred_rank = fm.metrics.de_ranking(**_lfc_fdr(np.repeat(pred[i][None], cs.n_cells(c), 0), cs.control_cells()))
        assert got[(c, "overlap_at_N")] == fm.metrics.de_overlap(true_rank, pred_rank)
        assert got[(c, "mae")] == pytest.approx(np.abs(pred[i] - pdata[c].X[0]).mean())


def _lfc_fdr(x, ctrl):
    res = fm.metrics.de_test(x, ctrl)
    return {"log2_fold_change": res["log2_fold_change"], "fdr": res["fdr"]}


def test_cell_set_normalises_like_the_pseudobulk(pdata, counts):
    cs = fm.metrics.cell_set(counts, pdata)
    np.testing.assert_allclose(cs.mean("g1"), pdata["g1"].X[0], atol=1e-12)
    # genes out of order are matched by name; the caller's AnnData is untouched
    shuffled = counts[:, counts.var_names[::-1]].copy()
    keep = shuffled.X.copy()
    cs2 = fm.metrics.cell_set(shuffled, pdata)
    np.testing.assert_allclose(cs2.mean("g2"), pdata["g2"].X[0], atol=1e-12)
    np.testing.assert_array_equal(shuffled.X, keep)
    with pytest.raises(ValueError, match="lacks 1 genes"):
        fm.metrics.cell_set(counts[:, 1:].copy(), pdata)
    other = counts.copy()
    other.X = other.X * 2
    other.X[other.obs["condition"].to_numpy() == "control", 0] += 1
    with pytest.raises(ValueError, match="not the cells"):
        fm.metrics.cell_set(other, pdata)


def test_bad_predictions(pdata, counts):
    conds = ["g1", "g2"]
    pred = np.array(pdata[conds].X)
    pred[0, 3] = np.nan
    keep = pred.copy()
    with pytest.raises(ValueError, match="NaN"):
        fm.metrics.perturbation_metrics(pdata, pred, conditions=conds)
    np.testing.assert_array_equal(pred, keep)
    # a negative predicted value: an error for the DE metrics unless clipped; the input stays as it is
    pred = np.array(pdata[conds].X)
    pred[1, 2] = -0.3
    keep = pred.copy()
    with pytest.raises(ValueError, match="negative"):
        fm.metrics.perturbation_metrics(pdata, pred, conditions=conds, cells=counts, metrics=["overlap_at_N"])
    df = fm.metrics.perturbation_metrics(
        pdata, pred, conditions=conds, cells=counts, metrics=["overlap_at_N", "mae"], clip_negative=True
    )
    np.testing.assert_array_equal(pred, keep)
    assert df.set_index(["condition", "metric"])["value"][("g2", "mae")] == pytest.approx(
        np.abs(pred[1] - pdata["g2"].X[0]).mean()  # the other metrics see the prediction as given
    )
    # conditions missing from the truth, or from the cells
    frame = pd.DataFrame(pdata[conds].X, index=["g1", "g9"], columns=pdata.var_names)
    with pytest.raises(KeyError, match="not rows"):
        fm.metrics.perturbation_metrics(pdata, frame)
    with pytest.raises(KeyError, match="no cells"):
        fm.metrics.perturbation_metrics(
            pdata,
            pdata[conds].X,
            conditions=conds,
            cells=counts[counts.obs["condition"] != "g2"].copy(),
            metrics=["overlap_at_N"],
        )
    with pytest.raises(ValueError, match="cells="):
        fm.metrics.perturbation_metrics(pdata, pdata[conds].X, conditions=conds, metrics=["overlap_at_N"])
    # genes out of order in a DataFrame are matched by name
    frame = pd.DataFrame(pdata[conds].X, index=conds, columns=pdata.var_names)
    a = fm.metrics.perturbation_metrics(pdata, frame, metrics=["mse"])
    b = fm.metrics.perturbation_metrics(pdata, frame[frame.columns[::-1]], metrics=["mse"])
    pd.testing.assert_frame_equal(a, b)
