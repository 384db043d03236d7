from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scfmkit as fm

pytest.importorskip("scib_metrics")


def _fast_metrics():
    """A cheap but representative subset (kNN-, silhouette- and PCA-based metrics) to keep tests fast."""
    from scib_metrics.benchmark import BatchCorrection, BioConservation

    bio = BioConservation(
        isolated_labels=False, nmi_ari_cluster_labels_kmeans=False, silhouette_label=True, clisi_knn=True
    )
    batch = BatchCorrection(
        bras=False, ilisi_knn=True, kbet_per_label=False, graph_connectivity=True, pcr_comparison=True
    )
    return {"bio_metrics": bio, "batch_metrics": batch}


def _tiny_metrics():
    from scib_metrics.benchmark import BatchCorrection, BioConservation

    bio = BioConservation(
        isolated_labels=False, nmi_ari_cluster_labels_kmeans=False, silhouette_label=True, clisi_knn=False
    )
    batch = BatchCorrection(
        bras=False, ilisi_knn=False, kbet_per_label=False, graph_connectivity=True, pcr_comparison=False
    )
    return {"bio_metrics": bio, "batch_metrics": batch}


@pytest.fixture(scope="module")
def emb_adata():
    """200 cells: lognorm X, 2 batches, 3 types; an 'integrated' embedding (types only) and a batchy one."""
    rng = np.random.default_rng(0)
    n = 200
    types = rng.integers(0, 3, n)
    batch = rng.integers(0, 2, n)
    X = np.log1p(rng.poisson(np.exp(rng.normal(0, 1, (3, 40)))[types] * (1 + batch[:, None])).astype(np.float32))
    obs = pd.DataFrame(
        {"cell_type": np.array(["A", "B", "C"])[types], "batch": np.array(["b0", "b1"])[batch]},
        index=[f"c{i}" for i in range(n)],
    )
    adata = ad.AnnData(X, obs=obs)
    adata.obsm["X_good"] = (np.eye(3)[types] * 5 + rng.normal(0, 1, (n, 3))).astype(np.float32)
    # all embeddings 3-d (and n_comps=3 below) so jax compiles each metric once per cell count
    adata.obsm["X_batchy"] = (np.eye(3)[batch] * 5 + rng.normal(0, 1, (n, 3))).astype(np.float32)
    adata.obsm["X_umap"] = rng.normal(size=(n, 2))
    return adata


def test_matches_benchmarker_and_leaves_adata_alone(emb_adata):
    from scib_metrics.benchmark import Benchmarker

    from scfmkit.metrics._integration import _exact_neighbors

    adata = emb_adata.copy()
    before_obsm, before_uns, before_obs = set(adata.obsm), dict(adata.uns), adata.obs.copy()
    df = fm.metrics.integration(
        adata,
        ["X_good", "X_batchy"],
        batch_key="batch",
        label_key="cell_type",
        baselines=(),
        neighbors="exact",
        n_comps=3,
        **_fast_metrics(),
    )
    # nothing written into the caller's AnnData
    assert set(adata.obsm) == before_obsm
    assert dict(adata.uns) == before_uns
    pd.testing.assert_frame_equal(adata.obs, before_obs)
    # tidy layout
    assert list(df.columns) == ["embedding", "metric", "metric_type", "value"]
    assert set(df.embedding) == {"X_good", "X_batchy"}
    assert {"Bio conservation", "Batch correction", "Total"} <= set(df.metric)
    wide = df.pivot(index="embedding", columns="metric", values="value")
    assert wide.loc["X_good", "Bio conservation"] > wide.loc["X_batchy", "Bio conservation"]
    # the same numbers as Benchmarker called directly (on its own copy, with our PCA as the unintegrated embedding)
    direct = adata.copy()
    import scanpy as sc

    sc.tl.pca(direct, n_comps=3, svd_solver="arpack", mask_var=None, random_state=0)
    bm = Benchmarker(
        direct,
        batch_key="batch",
        label_key="cell_type",
        embedding_obsm_keys=["X_good", "X_batchy"],
        pre_integrated_embedding_obsm_key="X_pca",
        progress_bar=False,
        **{
            "bio_conservation_metrics": _fast_metrics()["bio_metrics"],
            "batch_correction_metrics": _fast_metrics()["batch_metrics"],
        },
    )
    bm.prepare(neighbor_computer=_exact_neighbors)
    bm.benchmark()
    ref = bm.get_results(min_max_scale=False).drop(index="Metric Type").astype(float)
    for emb in ("X_good", "X_batchy"):
        for metric in ref.columns:
            assert wide.loc[emb, metric] == pytest.approx(ref.loc[emb, metric], abs=1e-6), (emb, metric)


def test_baselines_and_bootstrap_intervals(emb_adata):
    df = fm.metrics.integration(
        emb_adata,
        ["X_good"],
        batch_key="batch",
        label_key="cell_type",
        neighbors="exact",
        n_comps=3,
        n_boot=2,
        rng=1,
        **_tiny_metrics(),
    )
    assert set(df.embedding) == {"X_good", "Random (floor)", "PCA (unintegrated)"}
    assert df.attrs["baselines"] == ["Random (floor)", "PCA (unintegrated)"]
    wide = df.pivot(index="embedding", columns="metric", values="value")
    assert wide.loc["X_good", "Total"] > wide.loc["Random (floor)", "Total"]
    assert {"ci_low", "ci_high", "se"} <= set(df.columns)
    assert (df.ci_low <= df.value + 1e-12).all()
    assert (df.ci_high >= df.value - 1e-12).all()
    reps = pd.DataFrame(df.attrs["replicates"])
    assert set(reps.replicate) == {0, 1}
    assert set(reps.embedding) == set(df.embedding)


def test_default_embeddings_skip_layouts(emb_adata):
    df = fm.metrics.integration(
        emb_adata, batch_key="batch", label_key="cell_type", baselines=(), neighbors="exact", **_tiny_metrics()
    )
    assert set(df.embedding) == {"X_good", "X_batchy"}


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"embeddings": ["X_nope"]}, KeyError, "not found"),
        ({"batch_key": "nope"}, KeyError, "batch_key"),
        ({"baselines": ("umap",)}, ValueError, "Unknown baselines"),
        ({"neighbors": "faiss"}, ValueError, "neighbors"),
        ({"n_boot": 2, "boot_frac": 1.0}, ValueError, "boot_frac"),
    ],
)
def test_bad_input(emb_adata, kwargs, err, match):
    kwargs = {"embeddings": ["X_good"], "batch_key": "batch", "label_key": "cell_type", **kwargs}
    with pytest.raises(err, match=match):
        fm.metrics.integration(emb_adata, **kwargs)


def test_nan_rows_rejected(emb_adata):
    adata = emb_adata.copy()
    adata.obsm["X_good"][0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fm.metrics.integration(adata, ["X_good"], batch_key="batch", label_key="cell_type")


def test_all_metrics_off_is_an_error(emb_adata):
    from scib_metrics.benchmark import BatchCorrection, BioConservation

    off_bio = BioConservation(
        isolated_labels=False, nmi_ari_cluster_labels_kmeans=False, silhouette_label=False, clisi_knn=False
    )
    off_batch = BatchCorrection(
        bras=False, ilisi_knn=False, kbet_per_label=False, graph_connectivity=False, pcr_comparison=False
    )
    with pytest.raises(ValueError, match="switched off"):
        fm.metrics.integration(
            emb_adata,
            ["X_good"],
            batch_key="batch",
            label_key="cell_type",
            bio_metrics=off_bio,
            batch_metrics=off_batch,
        )
