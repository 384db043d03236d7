from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest

import scfmkit as fm
from scfmkit.datasets import _registry
from scfmkit.datasets._registry import DatasetFile


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path/served``."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_registry_matches_shared_checksums(shared_dir):
    sums = dict(line.split()[::-1] for line in (shared_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    for entry in _registry.DATASETS.values():
        assert sums[f"data/{entry.filename}"] == entry.sha256


def test_loads_from_data_dir():
    adata = fm.datasets.pbmc_3batch()
    assert adata.n_obs == 1200 and "donor" in adata.obs


def test_download_verifies_checksum(file_server, monkeypatch):
    root, url = file_server
    payload = b"cell,gene\n1,2\n"
    (root / "tiny.csv").write_bytes(payload)
    good = DatasetFile("tiny.csv", hashlib.sha256(payload).hexdigest(), f"{url}/tiny.csv", "test")
    bad = DatasetFile("tiny2.csv", "0" * 64, f"{url}/tiny.csv", "test")
    monkeypatch.setitem(_registry.DATASETS, "tiny", good)
    monkeypatch.setitem(_registry.DATASETS, "tiny_bad", bad)
    monkeypatch.delenv("SCFMKIT_DATA_DIR")
    fm.settings.reset()
    path = fm.datasets.fetch("tiny")
    assert path.read_bytes() == payload and path.parent == fm.settings.cache_dir / "data"
    assert fm.datasets.fetch("tiny") == path  # cached, no second download
    with pytest.raises(OSError, match="sha256"):
        fm.datasets.fetch("tiny_bad")
    assert not (fm.settings.cache_dir / "data" / "tiny2.csv").exists()


def test_unreachable_download_says_how_to_work_offline(monkeypatch):
    entry = DatasetFile("gone.h5ad", "0" * 64, "http://127.0.0.1:9/gone.h5ad", "test")
    monkeypatch.setitem(_registry.DATASETS, "gone", entry)
    monkeypatch.delenv("SCFMKIT_DATA_DIR")
    fm.settings.reset()
    with pytest.raises(OSError, match="SCFMKIT_DATA_DIR"):
        fm.datasets.fetch("gone")


def test_no_public_address_error(monkeypatch):
    monkeypatch.delenv("SCFMKIT_DATA_DIR")
    fm.settings.reset()
    with pytest.raises(FileNotFoundError, match="SCFMKIT_DATA_DIR"):
        fm.datasets.fetch("papalexi2021")


def test_settings_env_override(monkeypatch):
    monkeypatch.setenv("SCFMKIT_BATCH_SIZE", "7")
    monkeypatch.setenv("SCFMKIT_DEVICE", "cpu")
    fm.settings.reset()
    assert fm.settings.batch_size == 7 and fm.settings.resolve_device() == "cpu"
