from __future__ import annotations

import anndata as ad
import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest

import scfmkit as fm

mpl.use("Agg")


@pytest.fixture
def results():
    rows = []
    for emb, base in (("X_scVI", 0.7), ("X_geneformer", 0.5), ("Random (floor)", 0.2), ("PCA (unintegrated)", 0.6)):
        for metric, mtype, off in (
            ("Silhouette label", "Bio conservation", 0.0),
            ("cLISI", "Bio conservation", 0.1),
            ("iLISI", "Batch correction", -0.1),
            ("Graph connectivity", "Batch correction", 0.05),
            ("Bio conservation", "Aggregate score", 0.05),
            ("Batch correction", "Aggregate score", -0.02),
            ("Total", "Aggregate score", 0.02),
        ):
            v = base + off
            rows.append(
                {
                    "embedding": emb,
                    "metric": metric,
                    "metric_type": mtype,
                    "value": v,
                    "ci_low": v - 0.05,
                    "ci_high": v + 0.04,
                }  # fmt: skip
            )
    df = pd.DataFrame(rows)
    df.attrs["baselines"] = ["Random (floor)", "PCA (unintegrated)"]
    return df


def test_integration_table(results):
    import matplotlib.pyplot as plt

    fig = fm.pl.integration(results, return_fig=True)
    assert fig is not None
    texts = [t.get_text() for t in fig.axes[0].texts]
    # rows sorted by Total, best first
    rows = [t for t in texts if t in set(results.embedding)]
    assert rows == ["X_scVI", "PCA (unintegrated)", "X_geneformer", "Random (floor)"]
    assert "Aggregate score" in texts
    assert "whiskers: bootstrap interval" in texts
    plt.close(fig)
    assert fm.pl.integration(results.drop(columns=["ci_low", "ci_high"]), show=False) is None
    fig = fm.pl.integration(results, metrics=["iLISI"], sort_by=None, return_fig=True)
    plt.close(fig)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"metrics": ["nope"]}, "not in the results"), ({"sort_by": "nope"}, "sort_by")],
)
def test_integration_table_errors(results, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fm.pl.integration(results, show=False, **kwargs)
    with pytest.raises(ValueError, match="fm.metrics.integration"):
        fm.pl.integration(pd.DataFrame({"a": [1]}), show=False)


def test_reference_mapping_plot():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    ref = ad.AnnData(obs=pd.DataFrame({"cell_type": rng.choice(["A", "B"], 50)}, index=[f"r{i}" for i in range(50)]))
    ref.obsm["X_umap"] = rng.normal(size=(50, 2))
    q = ad.AnnData(
        obs=pd.DataFrame(
            {"cell_type_pred": rng.choice(["A", "B", "Unknown"], 20), "cell_type_uncertainty": rng.uniform(size=20)},
            index=[f"q{i}" for i in range(20)],
        )
    )
    with pytest.raises(KeyError, match="X_umap_ref"):
        fm.pl.reference_mapping(q, ref, label_key="cell_type", show=False)
    q.obsm["X_umap_ref"] = rng.normal(size=(20, 2))
    fig = fm.pl.reference_mapping(q, ref, label_key="cell_type", return_fig=True)
    assert len(fig.axes) == 4  # 3 panels + colorbar
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["A", "B", "Unknown"]
    plt.close(fig)
    fig = fm.pl.reference_mapping(q, ref, label_key="cell_type", show_reference_labels=False, return_fig=True)
    assert len(fig.axes) == 3
    plt.close(fig)
    with pytest.raises(KeyError, match="map_to_reference"):
        fm.pl.reference_mapping(q, ref, label_key="other", show=False)


def test_reference_mapping_plot_missing_labels():
    # NaN reference labels and NaN predictions: named groups in the legend, never a category called "nan"
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    lab = pd.Series(rng.choice(["A", "B"], 40), dtype=object)
    lab.iloc[:5] = np.nan
    ref = ad.AnnData(obs=pd.DataFrame({"cell_type": pd.Categorical(lab.array)}, index=[f"r{i}" for i in range(40)]))
    ref.obsm["X_umap"] = rng.normal(size=(40, 2))
    pred = pd.Series(rng.choice(["A", "B"], 20), dtype=object)
    pred.iloc[:3] = None
    q = ad.AnnData(
        obs=pd.DataFrame(
            {"cell_type_pred": pred.array, "cell_type_uncertainty": rng.uniform(size=20)},
            index=[f"q{i}" for i in range(20)],
        )
    )
    q.obsm["X_umap_ref"] = rng.normal(size=(20, 2))
    obs_before = ref.obs.copy()
    fig = fm.pl.reference_mapping(q, ref, label_key="cell_type", return_fig=True)
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["A", "B", "Unknown", "unlabelled (NaN)"]
    plt.close(fig)
    fig = fm.pl.reference_mapping(q, ref, label_key="cell_type", show_reference_labels=False, return_fig=True)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["A", "B", "Unknown"]
    plt.close(fig)
    pd.testing.assert_frame_equal(ref.obs, obs_before)
