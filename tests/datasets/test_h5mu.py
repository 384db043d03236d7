"""Reading .h5mu files written by older muon (modality groups without format metadata) on every mudata version."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import scfmkit as fm
from scfmkit.datasets import _h5mu

mudata = pytest.importorskip("mudata")

MULTIOME = "pbmc_multiome_rna_atac_1000cells.h5mu"
# the TypeError that mudata 0.4 raises on such a file
WEAKREF = TypeError("cannot create weak reference to 'dict' object")


def _check_multiome(mdata):
    assert isinstance(mdata, mudata.MuData)
    assert mdata.n_obs == 1000 and set(mdata.mod) == {"rna", "atac"}
    assert mdata["rna"].shape == (1000, 45) and mdata["atac"].shape == (1000, 174)
    assert mdata["rna"].X.nnz == 14512 and mdata["atac"].X.nnz == 15416
    assert list(mdata["rna"].var.columns) == ["gene_ids", "feature_types", "genome", "interval"]
    assert set(mdata["atac"].uns) == {"atac", "files"}
    assert mdata["atac"].uns["atac"]["peak_annotation"].shape == (184, 3)


def _same(a, b):
    assert list(a.mod) == list(b.mod)
    for m in a.mod:
        assert (a[m].X != b[m].X).nnz == 0
        assert a[m].obs.equals(b[m].obs) and a[m].var.equals(b[m].var)
        assert set(a[m].uns) == set(b[m].uns)
    assert a.obs.equals(b.obs) and a.var.equals(b.var)


def test_shared_file_has_the_old_layout(shared_dir):
    assert _h5mu._is_legacy_layout(shared_dir / "data" / MULTIOME)


def test_loader_reads_the_old_file(shared_dir):
    _check_multiome(fm.datasets.pbmc_multiome())
    _check_multiome(fm.datasets.read_h5mu(shared_dir / "data" / MULTIOME))


def test_legacy_reader_equals_mudata(shared_dir):
    path = shared_dir / "data" / MULTIOME
    legacy = _h5mu.read_h5mu_legacy(path)
    _check_multiome(legacy)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ref = mudata.read_h5mu(path)
    except TypeError:  # mudata >= 0.4: the case the fallback exists for
        pytest.skip(f"mudata {mudata.__version__} cannot read {MULTIOME}")
    _same(legacy, ref)


def test_fallback_when_mudata_fails(shared_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise WEAKREF

    monkeypatch.setattr(mudata, "read_h5mu", fail)
    path = shared_dir / "data" / MULTIOME
    _check_multiome(fm.datasets.read_h5mu(path))
    _check_multiome(fm.datasets.pbmc_multiome())
    with pytest.raises(ValueError, match="backed=None"):
        fm.datasets.read_h5mu(path, backed="r")


def test_new_layout_errors_are_not_hidden(tmp_path, monkeypatch):
    import anndata as ad

    path = tmp_path / "new.h5mu"
    mudata.MuData({"rna": ad.AnnData(np.ones((3, 2), dtype=np.float32))}).write_h5mu(path)
    assert not _h5mu._is_legacy_layout(path)
    assert fm.datasets.read_h5mu(path)["rna"].shape == (3, 2)

    def fail(*args, **kwargs):
        raise WEAKREF

    monkeypatch.setattr(mudata, "read_h5mu", fail)
    with pytest.raises(TypeError, match="weak reference"):
        fm.datasets.read_h5mu(path)


def test_cli_reads_the_old_file(shared_dir, tmp_path, monkeypatch):
    from scfmkit import _cli

    def fail(*args, **kwargs):
        raise WEAKREF

    monkeypatch.setattr(mudata, "read_h5mu", fail)
    _check_multiome(_cli._read(shared_dir / "data" / MULTIOME))


@pytest.mark.parametrize("name", ["pbmc10k_cite", "pbmc5k_cite", "kang2018", "kang2018_celltypes"])
def test_no_old_format_warnings(name):
    import anndata as ad

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fm.datasets.load(name)
    assert not [w for w in caught if issubclass(w.category, ad.OldFormatWarning)], [str(w.message) for w in caught]
    assert not [w for w in caught if "Moving element" in str(w.message)]
    # silenced around the read only, never globally
    with pytest.warns(ad.OldFormatWarning):
        warnings.warn("probe", ad.OldFormatWarning, stacklevel=1)
