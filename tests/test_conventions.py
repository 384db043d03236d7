"""Every public function follows the scverse signature conventions (cf. scanpy's test_sig_conventions)."""

from __future__ import annotations

import inspect

import pytest

import scfmkit as fm

FIRST_ARGS = {"adata", "data", "mdata", "results", "tokens", "y_true", "pred", "obs", "X"}


def _public_functions():
    for mod in (fm.pp, fm.tl, fm.pl, fm.metrics):
        for name in getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                yield pytest.param(obj, id=f"{mod.__name__.split('.')[-1]}.{name}")


@pytest.mark.parametrize("func", list(_public_functions()))
def test_signature_conventions(func):
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(positional) <= 3, f"{func.__name__}: at most 3 positional parameters, got {[p.name for p in positional]}"
    assert "random_state" not in sig.parameters, f"{func.__name__}: use `rng`, not `random_state`"
    if "copy" in sig.parameters:
        copy = sig.parameters["copy"]
        assert copy.kind is copy.KEYWORD_ONLY and copy.default is False
        assert positional and positional[0].name in {"adata", "data", "mdata"}
        ret = str(sig.return_annotation)
        assert "None" in ret and ("AnnData" in ret or "MuData" in ret), f"{func.__name__}: returns `AnnData | None`"
    if "key_added" in sig.parameters:
        assert sig.parameters["key_added"].kind is inspect.Parameter.KEYWORD_ONLY
    assert func.__doc__ and func.__doc__.strip(), f"{func.__name__} has no docstring"


def test_import_does_not_load_torch():
    import subprocess
    import sys

    heavy = "('torch', 'jax', 'scvi', 'transformers', 'numba', 'dask', 'distributed', 'zarr')"
    code = f"import sys, scfmkit; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_top_level_only_reexports():
    assert {"pp", "tl", "pl", "metrics", "models", "datasets", "settings"} <= set(fm.__all__)


def test_imports_run_downward():
    """metrics never import tl; models never import the package root or the wrappers (array kernels first)."""
    import ast
    from pathlib import Path

    src = Path(fm.__file__).parent
    rules = {"metrics": ("scfmkit.tl", "..tl"), "models": ("scfmkit.tl", "scfmkit.pp", "scfmkit.pl", "..tl", "..pp")}
    bad = []
    for folder, forbidden in rules.items():
        for path in (src / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    name = ("." * node.level) + (node.module or "")
                    if any(name == f or name.startswith(f + ".") for f in forbidden):
                        bad.append(f"{path.relative_to(src)}: from {name} import ...")
                    if folder == "models" and node.level == 2 and node.module is None:
                        bad.append(f"{path.relative_to(src)}: from .. import {[a.name for a in node.names]}")
    assert not bad, bad
