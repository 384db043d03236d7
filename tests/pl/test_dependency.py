from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

import scfmkit as fm


@pytest.fixture
def mapped():
    rng = np.random.default_rng(0)
    n = 12
    a = ad.AnnData(np.zeros((3, n), np.float32))
    a.var_names = [f"g{i}" for i in range(n)]
    key = "geneformer_dependency"
    for suffix, signed in (("", False), ("_coexpression", True), ("_random", False)):
        M = np.full((n, n), np.nan, np.float32)
        M[:4] = rng.normal(size=(4, n)) if signed else rng.random((4, n))
        M[range(4), range(4)] = np.nan
        a.varp[key + suffix] = M
    a.varp[f"{key}_n_cells"] = np.ones((n, n), np.float32)
    a.uns[key] = {"sources": ["g0", "g1", "g2", "g3"], "params": {"weights_note": "random-weight control"}}
    return a


def test_heatmap(mapped):
    fig = fm.pl.gene_dependency(mapped, n_targets=6, return_fig=True)
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == 4 and len(ax.get_xticklabels()) == 6
    assert {t.get_text() for t in ax.get_yticklabels()} == {"g0", "g1", "g2", "g3"}
    assert "random-weight control" in ax.get_title()
    plt.close(fig)
    fig = fm.pl.gene_dependency(
        mapped, key="geneformer_dependency_coexpression", genes=["g1", "g0"], cluster=False, return_fig=True
    )
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["g1", "g0"]
    assert fig.axes[0].images[0].get_cmap().name == "RdBu_r"  # signed map, centred
    plt.close(fig)
    assert fm.pl.gene_dependency(mapped, show=False) is None
    with pytest.raises(ValueError, match="not sources"):
        fm.pl.gene_dependency(mapped, genes=["g9"])
    with pytest.raises(KeyError, match="run `scfmkit.tl.gene_dependency`"):
        fm.pl.gene_dependency(mapped, key="nope")


def test_dependents(mapped):
    fig = fm.pl.gene_dependents(mapped, "g2", n_top=5, return_fig=True)
    assert [a.get_title() for a in fig.axes] == ["model", "coexpression", "random"]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    row = mapped.varp["geneformer_dependency"][2]
    best = mapped.var_names[np.nanargmax(np.abs(row))]
    assert labels[-1] == best and len(labels) == 5 and "g2" not in labels
    plt.close(fig)
    fig = fm.pl.gene_dependents(mapped, "g0", maps=["random"], return_fig=True)
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="not a source"):
        fm.pl.gene_dependents(mapped, "g7")
    with pytest.raises(KeyError, match="not found"):
        fm.pl.gene_dependents(mapped, "g0", maps=["pca"])
