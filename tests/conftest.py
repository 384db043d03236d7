from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden"


def _shared_dir() -> Path:
    env = os.environ.get("SCFMKIT_SHARED_DIR")
    return Path(env) if env else (REPO.parent / "shared")


# module- and session-scoped fixtures (tiny checkpoints of every registered model) run before the autouse fixture
# below: point them at ../shared too when pytest is run without nox's environment
os.environ.setdefault("SCFMKIT_DATA_DIR", str(_shared_dir() / "data"))
os.environ.setdefault("SCFMKIT_MODELS_DIR", str(_shared_dir() / "models"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The real data and model vocabularies beside the checkout (``../shared``)."""
    d = _shared_dir()
    if not (d / "README.md").is_file():
        pytest.fail(f"../shared not found at {d}; set SCFMKIT_SHARED_DIR to the shared folder.")
    return d


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(autouse=True)
def _scfmkit_env(monkeypatch, tmp_path_factory):
    """Point scfmkit at ../shared and a private cache; no progress bars in tests."""
    from scfmkit import settings

    d = _shared_dir()
    monkeypatch.setenv("SCFMKIT_DATA_DIR", str(d / "data"))
    monkeypatch.setenv("SCFMKIT_MODELS_DIR", str(d / "models"))
    monkeypatch.setenv("SCFMKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "scfmkit-cache"))
    monkeypatch.setenv("SCFMKIT_PROGRESS", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings.reset()
    yield
    settings.reset()
