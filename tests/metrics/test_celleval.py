"""cell-eval kernels against the numbers of cell-eval 0.8.1 / pdex 0.3.0 / cell-eval2 0.16.0 (README_celleval.md)."""

from __future__ import annotations

import numpy as np
import pytest

from scfmkit.metrics import _celleval as ce

TOL = 1e-9


@pytest.fixture(scope="module")
def golden(golden_dir):
    return dict(np.load(golden_dir / "celleval_norman.npz"))


@pytest.fixture(scope="module")
def cells(golden, shared_dir):
    import anndata as ad

    full = ad.read_h5ad(shared_dir / "data" / "norman2019_perturbench_subset.h5ad")
    sub = full[golden["rows"]]
    assert list(sub.var_names) == list(golden["genes"])
    return sub.X.toarray(), sub.obs["condition"].astype(str).to_numpy()


def _repeat(vecs, perts, X, lab):
    rows, labs = [], []
    for p in perts:
        n = int((lab == p).sum())
        rows.append(np.repeat(vecs[p][None], n, 0))
        labs += [p] * n
    ctrl = lab == "control"
    rows.append(X[ctrl])
    labs += ["control"] * int(ctrl.sum())
    return np.vstack(rows), np.array(labs)


def _panel(golden, real_x, real_lab, pred_x, pred_lab):
    perts, genes = list(golden["perts"]), list(golden["genes"])
    rc, pc = real_lab == "control", pred_lab == "control"
    true = np.array([real_x[real_lab == p].mean(0) for p in perts])
    pred = np.array([pred_x[pred_lab == p].mean(0) for p in perts])
    exclude = [[genes.index(p)] if p in genes else None for p in perts]
    out = {
        "discrimination_score_l1": ce.discrimination_score(
            pred, true, pred_control=pred_x[pc].mean(0), true_control=real_x[rc].mean(0), exclude=exclude
        ),
        "mae": np.array([ce.mean_absolute_error(pred[i], true[i]) for i in range(len(perts))]),
    }
    ranks = []
    for p in perts:
        a = ce.de_test(real_x[real_lab == p], real_x[rc])
        b = ce.de_test(pred_x[pred_lab == p], pred_x[pc])
        ranks.append((ce.de_ranking(a["log2_fold_change"], a["fdr"]), ce.de_ranking(b["log2_fold_change"], b["fdr"])))
    out["overlap_at_N"] = np.array([ce.de_overlap(t, q) for t, q in ranks])
    out["overlap_at_50"] = np.array([ce.de_overlap(t, q, k=50) for t, q in ranks])
    out["precision_at_N"] = np.array([ce.de_overlap(t, q, metric="precision") for t, q in ranks])
    return out


@pytest.fixture(scope="module")
def scored(golden, cells):
    X, lab = cells
    perts = list(golden["perts"])
    ctrl = lab == "control"
    base = ce.cell_mean_baseline(np.array([X[lab == c].mean(0) for c in np.unique(lab)]))
    rng = np.random.default_rng(0)
    preds = {
        "mean": _repeat(dict.fromkeys(perts, base), perts, X, lab),
        "blend": _repeat({p: 0.5 * X[lab == p].mean(0) + 0.5 * base for p in perts}, perts, X, lab),
        "noisy": (np.clip(X + rng.normal(0, 0.3, size=X.shape) * (~ctrl)[:, None], 0, None), lab),
    }
    out = {tag: _panel(golden, X, lab, px, pl) for tag, (px, pl) in preds.items()}
    a, b = ce.split_halves(lab, rng=int(golden["replicate_seed"]))
    out["replicate"] = _panel(golden, X[a], lab[a], X[b], lab[b])
    out["_base"] = base
    out["_halves"] = (a, b)
    return out


def test_de_test_equals_pdex(golden, cells):
    X, lab = cells
    ctrl = lab == "control"
    for i, p in enumerate(golden["perts"]):
        res = ce.de_test(X[lab == p], X[ctrl])
        for col in ["log2_fold_change", "p_value", "fdr", "statistic", "target_mean", "ref_mean"]:
            mine, ref = res[col], golden[f"pdex_real_{col}"][i]
            fin = np.isfinite(ref)
            np.testing.assert_array_equal(np.isfinite(mine), fin)
            np.testing.assert_array_equal(mine[~fin], ref[~fin])  # the same +-inf fold changes
            np.testing.assert_allclose(mine[fin], ref[fin], rtol=0, atol=TOL, err_msg=f"{p} {col}")
        # cell-eval's own DE table holds float32 values
        for col in ["log2_fold_change", "fdr"]:
            np.testing.assert_array_equal(res[col].astype(np.float32), golden[f"real_de_{col}"][i])


def test_de_test_of_a_repeated_profile(golden, cells, scored):
    # cell-eval scores a pseudobulk prediction by repeating it for every cell: the baseline's DE table
    X, lab = cells
    ctrl = lab == "control"
    for i, p in enumerate(golden["perts"]):
        n = int((lab == p).sum())
        res = ce.de_test(np.repeat(scored["_base"][None], n, 0), X[ctrl])
        for col in ["log2_fold_change", "fdr"]:
            np.testing.assert_array_equal(res[col].astype(np.float32), golden[f"mean_pred_de_{col}"][i])


def test_cell_mean_baseline(golden, scored):
    np.testing.assert_allclose(scored["_base"], golden["base_vec"], rtol=0, atol=TOL)


def test_split_halves_equals_celleval2(golden, scored):
    a, b = scored["_halves"]
    np.testing.assert_array_equal(a, golden["half_a_rows"])
    np.testing.assert_array_equal(b, golden["half_b_rows"])
    assert not set(a) & set(b)


@pytest.mark.parametrize("tag", ["mean", "blend", "noisy", "replicate"])
@pytest.mark.parametrize(
    "metric", ["mae", "discrimination_score_l1", "overlap_at_N", "overlap_at_50", "precision_at_N"]
)
def test_per_condition_metrics(golden, scored, tag, metric):
    np.testing.assert_allclose(scored[tag][metric], golden[f"{tag}__{metric}"], rtol=0, atol=TOL)


@pytest.mark.parametrize("tag", ["blend", "noisy"])
def test_scores(golden, scored, tag):
    names = [str(n) for n in golden[f"score_{tag}_names"]]
    mine = {
        m: ce.celleval_score(scored[tag][m].mean(), scored["mean"][m].mean(), higher_is_better=m != "mae")
        for m in names[:-1]
    }
    mine["avg_score"] = float(np.mean(list(mine.values())))
    np.testing.assert_allclose([mine[n] for n in names], golden[f"score_{tag}"], rtol=0, atol=TOL)
    for m in ["mae", "discrimination_score_l1", "overlap_at_N"]:
        u, b, r, s = golden[f"score2026_{tag}__{m}"]
        got = ce.replicate_score(
            scored[tag][m].mean(), scored["mean"][m].mean(), scored["replicate"][m].mean(), higher_is_better=m != "mae"
        )
        assert got == pytest.approx(s, abs=TOL)


# hand-checked cases and bad input


def test_overlap_hand():
    # true top genes [3, 1, 7], predicted [1, 9, 3, 4]: N = 3, top-3 of each share {1, 3} -> 2/3
    assert ce.de_overlap([3, 1, 7], [1, 9, 3, 4]) == pytest.approx(2 / 3)
    # precision at N: N = 4 predicted, but only 3 true: 2 of the top-4 predicted are true -> 2/4
    assert ce.de_overlap([3, 1, 7], [1, 9, 3, 4], metric="precision") == pytest.approx(0.5)
    assert ce.de_overlap([], [1, 2]) == 0.0  # no true DE gene: cell-eval's 0
    with pytest.raises(ValueError, match="overlap"):
        ce.de_overlap([1], [1], metric="recall")


def test_ranking_hand():
    # fdr < 0.05 keeps genes 0, 2, 3; |lfc| 1, 3, 3 -> 2 and 3 tie (gene order), then 0
    np.testing.assert_array_equal(ce.de_ranking([1.0, 5.0, -3.0, 3.0], [0.01, 0.2, 0.04, 0.0]), [2, 3, 0])


def test_discrimination_hand():
    # effects: true rows [0,0], [1,0], [3,0]; the prediction of row 1 is [2.1, 0]: nearest is row 2 -> rank 1 of 3
    true = np.array([[0.0, 0], [1, 0], [3, 0]])
    pred = np.array([[0.0, 0], [2.1, 0], [3, 0]])
    np.testing.assert_allclose(
        ce.discrimination_score(pred, true, pred_control=0, true_control=0), [1.0, 1 - 1 / 3, 1.0]
    )
    # leaving out the first column makes every row equal: argsort of a tie keeps row order -> ranks 0, 1, 2
    np.testing.assert_allclose(
        ce.discrimination_score(pred, true, pred_control=0, true_control=0, exclude=[[0]] * 3), [1.0, 2 / 3, 1 / 3]
    )


def test_scores_hand():
    # error: 1 - 2/4; score: (0.8 - 0.6) / 0.4; worse than the baseline clips to 0
    assert ce.celleval_score(2.0, 4.0, higher_is_better=False) == pytest.approx(0.5)
    assert ce.celleval_score(0.8, 0.6, higher_is_better=True) == pytest.approx(0.5)
    assert ce.celleval_score(0.5, 0.6, higher_is_better=True) == 0.0
    # 2026: (u - b) / (r - b); no span -> NaN
    assert ce.replicate_score(0.8, 0.6, 1.0, higher_is_better=True) == pytest.approx(0.5)
    assert ce.replicate_score(3.0, 4.0, 2.0, higher_is_better=False) == pytest.approx(0.5)
    assert np.isnan(ce.replicate_score(0.8, 0.6, 0.6, higher_is_better=True))


def test_bad_input_untouched():
    rng = np.random.default_rng(1)
    x = rng.random((5, 4))
    ctrl = rng.random((6, 4))
    for bad, match in [(np.nan, "NaN"), (-0.5, "negative")]:
        y = x.copy()
        y[0, 1] = bad
        keep = y.copy()
        with pytest.raises(ValueError, match=match):
            ce.de_test(y, ctrl)
        np.testing.assert_array_equal(y, keep)
    with pytest.raises(ValueError, match="same genes"):
        ce.de_test(x, ctrl[:, :3])
    with pytest.raises(ValueError, match="no cells"):
        ce.de_test(x[:0], ctrl)
    p = x.copy()
    p[2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ce.discrimination_score(p, x, pred_control=0, true_control=0)
    with pytest.raises(ValueError, match="2 cells"):
        ce.split_halves(["a", "b"], rng=0)


def test_scoring_loop_equals_celleval(golden, cells, scored):
    # fm.metrics.perturbation_metrics on the pseudobulk + cells gives cell-eval's per-condition numbers
    import anndata as ad
    import pandas as pd

    import scfmkit as fm

    X, lab = cells
    obs = pd.DataFrame({"condition": lab}, index=[f"c{i}" for i in range(lab.size)])
    adata = ad.AnnData(X, obs=obs)
    adata.var_names = [str(g) for g in golden["genes"]]
    pdata = fm.pp.pseudobulk_perturbations(adata, counts=False)
    perts = [str(p) for p in golden["perts"]]
    cs = fm.metrics.cell_set(adata, pdata)
    metrics = ["mae", "discrimination_score_l1", "overlap_at_N", "precision_at_N"]
    for tag, vec in [
        ("mean", lambda p: scored["_base"]),
        ("blend", lambda p: 0.5 * X[lab == p].mean(0) + 0.5 * scored["_base"]),
    ]:
        frame = pd.DataFrame([vec(p) for p in perts], index=perts, columns=adata.var_names)
        df = fm.metrics.perturbation_metrics(pdata, frame, cells=cs, metrics=metrics)
        got = df.pivot(index="condition", columns="metric", values="value").loc[perts]
        for m in metrics:
            np.testing.assert_allclose(got[m].to_numpy(), golden[f"{tag}__{m}"], rtol=0, atol=TOL, err_msg=f"{tag} {m}")
    # the replicate: half B's cells (with their own controls) as the prediction of half A
    a, b = scored["_halves"]
    half_a = adata[a].copy()
    pa = fm.pp.pseudobulk_perturbations(half_a, counts=False)
    cb = fm.metrics.CellSet(X[b], lab[b], "control")
    frame = pd.DataFrame([cb.mean(p) for p in perts], index=perts, columns=adata.var_names)
    df = fm.metrics.perturbation_metrics(pa, frame, cells=half_a, pred_cells=cb, metrics=metrics)
    got = df.pivot(index="condition", columns="metric", values="value").loc[perts]
    for m in metrics:
        np.testing.assert_allclose(got[m].to_numpy(), golden[f"replicate__{m}"], rtol=0, atol=TOL, err_msg=m)


@pytest.mark.slow
def test_de_genes_per_condition_norman_papalexi(shared_dir):
    # the measured reason why cell-eval's DE overlap cannot discriminate on these data (docs/when_does_fm_help.md)
    import anndata as ad

    import scfmkit as fm

    full = ad.read_h5ad(shared_dir / "data" / "norman2019_perturbench_subset.h5ad")
    cells = full[full.obs["dataset"] == "norman19"].copy()
    pb = fm.pp.pseudobulk_perturbations(cells, n_top_de=0)
    cs = fm.metrics.cell_set(cells, pb)
    n = np.array([cs.ranking(c).size for c in pb.obs_names if c != "control"])
    assert (n.size, pb.n_vars, np.median(n), int((n == 0).sum()), int(n.max())) == (33, 500, 2.0, 11, 7)
    pap = ad.read_h5ad(shared_dir / "data" / "papalexi2021_eccite_lowmoi.h5ad")
    pbp = fm.pp.pseudobulk_perturbations(pap, perturbation_key="target", control="non-targeting", n_top_de=0)
    cs = fm.metrics.cell_set(pap, pbp)
    n = np.array([cs.ranking(c).size for c in pbp.obs_names if c != "non-targeting"])
    assert (n.size, pbp.n_vars, np.median(n), int((n == 0).sum()), int(n.max())) == (25, 299, 1.0, 9, 111)
