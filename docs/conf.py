"""Sphinx configuration: myst-nb pages and stored notebook outputs, numpydoc API reference via napoleon."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
os.environ.setdefault("COLUMNS", "100")  # stable --help line wrapping

import scfmkit  # noqa: E402

project = "scfmkit"
author = "scfmkit developers"
copyright = "2026, scfmkit developers"  # noqa: A001
version = release = scfmkit.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# notebooks are executed by tests/test_notebooks.py and stored with their outputs; the docs only render them
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}  # .rst first: autosummary stubs
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
# widget outputs of progress bars; notebooks saved before execution have no language_info (code shown unhighlighted)
suppress_warnings = ["mystnb.unknown_mime_type", "mystnb.lexer", "myst-nb.lexer"]

autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# this package writes "Returns" as prose plus bullet lists of the keys written (not "name : type" entries): render it
# as written instead of letting napoleon split "key: text" lines into typed return values
napoleon_custom_sections = ["Returns"]
napoleon_use_param = True
napoleon_use_ivar = True  # "Attributes" sections as fields, not duplicates of the autodoc members

html_theme = "furo"
html_title = f"scfmkit {release}"
templates_path = []
html_static_path = []


def _write_cli_help(app) -> None:
    """Write ``scfmkit <command> --help`` into ``_build/cli/`` (git-ignored) so the CLI page shows the current options."""
    from scfmkit._cli import build_parser

    out = HERE / "_build" / "cli"
    out.mkdir(parents=True, exist_ok=True)
    parser = build_parser()
    (out / "cli_help.txt").write_text(parser.format_help())
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        (out / f"cli_help_{name}.txt").write_text(p.format_help())


def setup(app):
    app.connect("builder-inited", _write_cli_help)
