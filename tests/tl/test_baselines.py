from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scfmkit as fm
from scfmkit.tl._baselines import detect_input


def _counts_adata(n_cells=240, n_genes=120, seed=0):
    """Counts with 3 cell types (distinct gene programmes) and 2 batches (a multiplicative shift)."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n_cells)
    batch = rng.integers(0, 2, n_cells)
    base = rng.gamma(2.0, 1.0, (3, n_genes))
    base[np.arange(3)[:, None], rng.integers(0, n_genes, (3, 15))] *= 8
    shift = rng.gamma(5.0, 0.2, (2, n_genes))
    mu = base[types] * shift[batch]
    X = rng.poisson(mu).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(np.array(["A", "B", "C"])[types]), "batch": pd.Categorical(batch.astype(str))},
        index=[f"c{i}" for i in range(n_cells)],
    )
    return ad.AnnData(sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


def _lognorm(adata):
    import scanpy as sc

    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


@pytest.fixture
def counts():
    return _counts_adata()


def test_detect_input(counts):
    assert detect_input(counts.X) == "counts"
    assert detect_input(_lognorm(counts).X) == "lognorm"
    with pytest.raises(ValueError, match="negative"):
        detect_input(-np.ones((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        detect_input(np.full((3, 3), np.nan))


def test_pca_random_on_counts_matches_scanpy(counts):
    import scanpy as sc

    before = counts.X.copy()
    fm.tl.baselines(counts, ("random", "pca"), n_hvg=60, n_comps=10, rng=1)
    assert counts.obsm["X_random"].shape == (counts.n_obs, 10)
    assert counts.obsm["X_pca"].shape == (counts.n_obs, 10)
    assert counts.obsm["X_pca"].dtype == np.float32
    assert (counts.X != before).nnz == 0  # counts untouched
    params = counts.uns["baselines"]["params"]
    assert params["input"] == "counts"
    assert list(params["keys"]) == ["X_random", "X_pca"]
    assert len(counts.uns["baselines"]["hvg"]) == 60
    # the same as scanpy by hand
    ref = _lognorm(counts)
    sc.pp.highly_variable_genes(ref, n_top_genes=60, flavor="seurat")
    ref = ref[:, ref.var.highly_variable].copy()
    sc.pp.pca(ref, n_comps=10, random_state=1, svd_solver="arpack")
    np.testing.assert_allclose(np.abs(counts.obsm["X_pca"]), np.abs(ref.obsm["X_pca"]), atol=1e-3)
    assert "variance_ratio" in counts.uns["pca"]


def test_lognorm_input_gives_same_pca(counts):
    a = counts.copy()
    b = _lognorm(counts)
    fm.tl.baselines(a, ("pca",), n_hvg=60, n_comps=5)
    fm.tl.baselines(b, ("pca",), n_hvg=60, n_comps=5)
    assert b.uns["baselines"]["params"]["input"] == "lognorm"
    np.testing.assert_allclose(np.abs(a.obsm["X_pca"]), np.abs(b.obsm["X_pca"]), atol=1e-3)


def test_rng_reproducible(counts):
    a = fm.tl.baselines(counts, ("random",), rng=3, copy=True)
    b = fm.tl.baselines(counts, ("random",), rng=np.int64(3), copy=True)
    c = fm.tl.baselines(counts, ("random",), rng=4, copy=True)
    np.testing.assert_array_equal(a.obsm["X_random"], b.obsm["X_random"])
    assert not np.allclose(a.obsm["X_random"], c.obsm["X_random"])
    assert "X_random" not in counts.obsm  # copy=True leaves the caller alone


def test_scvi_fast(counts, tmp_path):
    fm.tl.baselines(
        counts, ("scvi",), batch_key="batch", n_hvg=80, max_epochs=2, n_latent=6, scvi_save_dir=tmp_path / "m"
    )
    assert counts.obsm["X_scVI"].shape == (counts.n_obs, 6)
    assert np.isfinite(counts.obsm["X_scVI"]).all()
    assert counts.uns["baselines"]["params"]["scvi"]["epochs"] == 2
    assert (tmp_path / "m" / "model.pt").is_file()


def test_scvi_refuses_lognorm_and_leaves_data_untouched(counts):
    lg = _lognorm(counts)
    before = set(lg.obsm)
    with pytest.raises(ValueError, match="scVI needs raw counts"):
        fm.tl.baselines(lg, ("pca", "scvi"), max_epochs=1)
    assert set(lg.obsm) == before
    assert "baselines" not in lg.uns
    # a counts layer next to log-normalised X is accepted
    lg.layers["counts"] = counts.X.copy()
    fm.tl.baselines(lg, ("pca", "scvi"), counts_layer="counts", n_hvg=50, max_epochs=1, n_latent=4)
    assert lg.uns["baselines"]["params"]["input"] == "lognorm"
    assert lg.obsm["X_scVI"].shape == (lg.n_obs, 4)


def test_harmony(counts):
    pytest.importorskip("harmonypy")
    fm.tl.baselines(counts, ("pca", "harmony"), batch_key="batch", n_hvg=60, n_comps=8)
    assert counts.obsm["X_harmony"].shape == (counts.n_obs, 8)
    assert not np.allclose(counts.obsm["X_harmony"], counts.obsm["X_pca"])


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"methods": ("umap",)}, ValueError, "Unknown baseline"),
        ({"methods": ("harmony",)}, ValueError, "batch_key"),
        ({"methods": ("pca",), "batch_key": "nope"}, KeyError, "batch_key"),
        ({"methods": ("pca",), "layer": "nope"}, KeyError, "Layer"),
        ({"methods": ("pca",), "rng": "x"}, TypeError, "rng"),
    ],
)
def test_bad_input(counts, kwargs, err, match):
    with pytest.raises(err, match=match):
        fm.tl.baselines(counts, **kwargs)
    assert not counts.obsm


def test_mudata(counts):
    mudata = pytest.importorskip("mudata")
    md = mudata.MuData({"rna": counts})
    fm.tl.baselines(md, ("random", "pca"), n_hvg=50, n_comps=5)
    assert md["rna"].obsm["X_pca"].shape == (counts.n_obs, 5)
    assert md.obsm["rna:X_pca"].shape == (counts.n_obs, 5)


@pytest.mark.parametrize("methods", [("pca",), ("random", "pca", "harmony")])
@pytest.mark.parametrize("kind", ["categorical", "object"])
def test_nan_batch_labels_raise(counts, methods, kind):
    # pandas < 3 turned NaN into a batch called "nan" (astype(str)); pandas 3 keeps it missing. Neither is silent here.
    if "harmony" in methods:
        pytest.importorskip("harmonypy")
    batch = counts.obs["batch"].astype(object)
    batch.iloc[[3, 7]] = np.nan
    counts.obs["batch"] = pd.Categorical(batch) if kind == "categorical" else batch
    obs_before = counts.obs.copy()
    with pytest.raises(ValueError, match=r"obs\['batch'\] \(the batch_key\) has 2 missing value"):
        fm.tl.baselines(counts, methods, batch_key="batch", n_hvg=50, n_comps=5)
    assert not counts.obsm and "baselines" not in counts.uns
    pd.testing.assert_frame_equal(counts.obs, obs_before)
