"""Execute every tutorial in ``notebooks/`` on the real ``../shared`` data, so an outdated notebook fails CI.

One test per notebook (pytest-xdist spreads them over workers), run with the notebook folder as the working directory
and the ``SCFMKIT_*`` environment of ``conftest.py`` (data and model folders, a private cache, no progress bars).
The executed copy is not written back; refresh the stored outputs with
``python tests/test_notebooks.py notebooks/<name>.ipynb`` (executes in place).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TIMEOUT = 1500  # seconds per notebook (the heaviest take ~10 min on 2 busy cores)


def _execute(path: Path, timeout: int = TIMEOUT):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    deadline = time.monotonic() + timeout  # the limit is for the whole notebook: each cell gets what is left

    client = NotebookClient(
        nb,
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        allow_errors=False,
    )
    client.execute()
    return nb


def execute_in_place(path: str | Path, timeout: int = 1200) -> float:
    """Execute a notebook and store its outputs (for maintainers); returns the seconds it took."""
    import nbformat

    path = Path(path).resolve()
    t0 = time.perf_counter()
    nb = _execute(path, timeout)
    nbformat.write(nb, path)
    return time.perf_counter() - t0


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    assert os.environ.get("SCFMKIT_DATA_DIR"), "conftest sets SCFMKIT_DATA_DIR"
    t0 = time.perf_counter()
    try:
        _execute(path)
    except CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}", pytrace=False)
    except CellTimeoutError as err:
        pytest.fail(f"{path.name} ran past the {TIMEOUT} s notebook limit: {err}", pytrace=False)
    print(f"{path.name}: {time.perf_counter() - t0:.0f} s")


def test_every_notebook_is_collected():
    names = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert {"embeddings", "multiomics", "gene_dependency", "finetune_annotation"} <= names


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(f"{arg}: executed in place in {execute_in_place(arg):.0f} s")
