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


def _imports(path, package_depth):
    """Every module a file imports (function-level imports too), as absolute ``scfmkit.`` names where relative."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = ["scfmkit", *package_depth]
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([node.module] if node.module else []))
            yield base
            if node.module is None or node.level == 0:  # `from .. import tl`, `from scfmkit import tl`
                yield from (f"{base}.{a.name}" for a in node.names)


def test_imports_run_downward():
    """Imports run downward, at module level and inside functions alike.

    metrics never import tl; models never import the package root or the wrappers (array kernels first); pp never
    imports tl or pl (what both need, e.g. the blockwise engine, lives below them in ``scfmkit._*``); the private
    top-level modules never import the wrappers.
    """
    from pathlib import Path

    src = Path(fm.__file__).parent
    wrappers = ("scfmkit.tl", "scfmkit.pp", "scfmkit.pl")
    rules = {
        "metrics": ("scfmkit.tl", "scfmkit.pl"),
        "models": wrappers,
        "pp": ("scfmkit.tl", "scfmkit.pl"),
        "_*.py": wrappers,  # the private engine modules below pp and tl (the CLI on top is exempt)
    }
    bad = []
    for folder, forbidden in rules.items():
        if folder.endswith(".py"):
            paths = [p for p in src.glob(folder) if not p.name.startswith(("__", "_cli"))]
        else:
            paths = list((src / folder).rglob("*.py"))
        for path in paths:
            rel = path.relative_to(src)
            for name in _imports(path, list(rel.parts[:-1])):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    bad.append(f"{rel}: imports {name}")
                if folder == "models" and name == "scfmkit":
                    bad.append(f"{rel}: imports the package root")
    assert not bad, bad


def test_downward_rule_sees_function_level_imports(tmp_path):
    """The rule above reads imports inside functions too (``pp`` once imported ``tl`` inside ``tokenize``)."""
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from ..tl import _embed\n    from .. import tl\n    import scfmkit.pl\n")
    names = set(_imports(path, ["pp"]))
    assert {"scfmkit.tl", "scfmkit.pl"} <= names
