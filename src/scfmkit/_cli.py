"""``scfmkit`` command line: thin wrappers over the Python API for Snakemake/Nextflow pipelines.

Every subcommand reads ``.h5ad`` or ``.h5mu``, never writes over its input (or any existing file) unless
``--overwrite`` is given, writes its output atomically (a temporary file renamed at the end), exits with status 1
and one line ``scfmkit: error: ...`` on stderr on bad input (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _cli_dask

__all__ = ["main"]

PROG = "scfmkit"
_READ_SUFFIXES = {".h5ad", ".h5mu"}


class CLIError(Exception):
    """Bad command line input: reported as one line, without a traceback."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line ``scfmkit: error: ...`` (exit status 2)."""

    def error(self, message: str):
        hint = f" (see `{self.prog} --help`)"
        self.exit(2, f"{PROG}: error: {message}{hint}\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults (options whose default is ``None`` say theirs in words) and keep line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


# ----------------------------------------------------------------------------------------------------- I/O helpers


def _check_input(path: Path) -> Path:
    if path.suffix not in _READ_SUFFIXES:
        msg = f"input {str(path)!r} must end in .h5ad or .h5mu."
        raise CLIError(msg)
    if not path.is_file():
        msg = f"input file {str(path)!r} does not exist."
        raise CLIError(msg)
    return path


def _check_output(path: Path, inputs: Sequence[Path], *, overwrite: bool, suffixes: set[str]) -> Path:
    if path.suffix not in suffixes:
        msg = f"output {str(path)!r} must end in one of {sorted(suffixes)}."
        raise CLIError(msg)
    for inp in inputs:
        if path.resolve() == inp.resolve() and not overwrite:
            msg = f"output {str(path)!r} is the input file; choose another name or pass --overwrite."
            raise CLIError(msg)
    if path.exists() and not overwrite:
        msg = f"output {str(path)!r} exists; remove it or pass --overwrite."
        raise CLIError(msg)
    if path.exists() and path.is_dir():
        msg = f"output {str(path)!r} is a directory."
        raise CLIError(msg)
    return path


def _read(path: Path):
    if path.suffix == ".h5mu":
        from .datasets import read_h5mu

        return read_h5mu(path)
    import anndata as ad

    return ad.read_h5ad(path)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a failed run leaves no half-written output.

    Missing parent folders are made only now, when there is a result to write, and removed again if writing fails.
    """
    created = [p for p in reversed(path.parent.absolute().parents) if not p.exists()]
    created += [] if path.parent.exists() else [path.parent.absolute()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    ok = False
    try:
        write(tmp_path)
        tmp_path.replace(path)
        ok = True
    finally:
        tmp_path.unlink(missing_ok=True)
        if not ok:
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _write_data(data, path: Path, mod: str | None) -> None:
    from ._utils import is_mudata

    if path.suffix == ".h5mu":
        if not is_mudata(data):
            import mudata as md

            data = md.MuData({mod or "rna": data})
        _atomic_write(path, lambda p: data.write_h5mu(p))
    else:
        adata = data.mod[mod] if is_mudata(data) else data
        _atomic_write(path, lambda p: adata.write_h5ad(p))


def _write_csv(df, path: Path) -> None:
    _atomic_write(path, lambda p: df.to_csv(p, index=False))


def _mod(data, mod: str | None) -> str | None:
    """``mod`` for a MuData (checked), ``None`` for an AnnData."""
    from ._utils import is_mudata

    if not is_mudata(data):
        return None
    if mod not in data.mod:
        msg = f"modality {mod!r} is not in the input (it has {list(data.mod)}); pass --mod."
        raise CLIError(msg)
    return mod


# -------------------------------------------------------------------------------------------------- subcommands


def _cmd_embed(args: argparse.Namespace) -> None:
    import scfmkit as fm

    options: dict[str, Any] = {}
    if args.input_kind is not None:
        options["input"] = args.input_kind
    if args.emb_layer is not None:
        options["emb_layer"] = args.emb_layer
    if args.pooling is not None:
        options["pooling"] = args.pooling
    if _cli_dask.wants_zarr(args):
        _cli_dask.embed_zarr(args, options, CLIError)
        return
    inp = _check_input(args.input)
    out = _check_output(args.output, [inp], overwrite=args.overwrite, suffixes=_READ_SUFFIXES)
    data = _read(inp)
    mod = _mod(data, args.mod)
    fm.tl.embed(
        data,
        args.model,
        weights=args.weights,
        layer=args.layer,
        gene_key=args.gene_key,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        mod=mod,
        key_added=args.key_added,
        **options,
    )
    _write_data(data, out, mod)
    logging.getLogger("scfmkit").info("wrote %s", out)


def _cmd_benchmark_integration(args: argparse.Namespace) -> None:
    import scfmkit as fm

    inp = _check_input(args.input)
    out = _check_output(args.output, [inp], overwrite=args.overwrite, suffixes={".csv"})
    data = _read(inp)
    mod = _mod(data, args.mod)
    res = fm.metrics.integration(
        data,
        args.embeddings,
        batch_key=args.batch_key,
        label_key=args.label_key,
        baselines=tuple(args.baselines),
        layer=args.layer,
        n_boot=args.n_boot,
        neighbors=args.neighbors,
        rng=args.seed,
        mod=mod,
    )
    _write_csv(res, out)
    logging.getLogger("scfmkit").info("wrote %s (%d rows)", out, len(res))


def _cmd_benchmark_perturbation(args: argparse.Namespace) -> None:
    import scfmkit as fm

    inp = _check_input(args.input)
    out = _check_output(args.output, [inp], overwrite=args.overwrite, suffixes={".csv"})
    data = _read(inp)
    mod = _mod(data, args.mod)
    known = set(fm.tl.available_predictors())
    bad = [m for m in args.methods if m not in known]
    if bad:
        msg = f"unknown method(s) {bad}; choose from {sorted(known)}."
        raise CLIError(msg)
    res = fm.tl.benchmark_perturbation(
        data,
        methods=tuple(args.methods),
        split=args.split,
        seeds=args.seeds,
        perturbation_key=args.perturbation_key,
        control=args.control,
        mod=mod,
    )
    _write_csv(res, out)
    logging.getLogger("scfmkit").info("wrote %s (%d rows)", out, len(res))


# ------------------------------------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mod", default="rna", help="modality of a .h5mu input to read and write")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing output (even the input)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bars on long loops (also SCFMKIT_PROGRESS=0)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what is done (INFO level)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    """The ``scfmkit`` argument parser (used by :func:`main` and the documentation)."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Single-cell foundation models on AnnData/MuData, next to strong baselines.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "embed",
        help="cell embeddings with a foundation model (fm.tl.embed)",
        description=(
            "Embed cells with a foundation model and write obsm['X_<family>'] (e.g. X_geneformer) and\n"
            "uns['<family>']['params'] into OUT. An AnnData IN.zarr is read lazily and embedded block by block\n"
            "on dask (--scheduler ADDRESS or --workers N) into the zarr store OUT.zarr; running it again resumes.\n"
            "For a .h5mu the modality --mod is embedded and the result is also\n"
            "stored as mdata.obsm['<mod>:X_<family>']; OUT .h5ad from a .h5mu input holds that modality only.\n"
            "--weights random is the foundationless control (same architecture, real vocabulary)."
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("input", type=Path, metavar="IN", help="input .h5ad or .h5mu (cells x genes)")
    p.add_argument("output", type=Path, metavar="OUT", help="output .h5ad or .h5mu")
    p.add_argument(
        "--model",
        default="geneformer-v1",
        help="registry name (see `fm.models.available_models()`) or a checkpoint folder",
    )
    p.add_argument(
        "--weights",
        choices=["pretrained", "random"],
        default="pretrained",
        help="checkpoint weights or the seeded random-weight control",
    )
    p.add_argument("--layer", default=None, help="layer with the values (default: X)")
    p.add_argument("--gene-key", default=None, help="var column with gene ids or symbols (default: var_names)")
    p.add_argument(
        "--input",
        dest="input_kind",
        choices=["counts", "lognorm"],
        default=None,
        help="Geneformer: what the values are (model default: counts)",
    )
    p.add_argument("--emb-layer", type=int, default=None, help="hidden layer to read (model default)")
    p.add_argument("--pooling", choices=["mean", "cls"], default=None, help="cell pooling (model default)")
    p.add_argument(
        "--device", default=None, help="torch device, e.g. cpu or cuda (default: fm.settings.device, 'auto')"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="cells per forward pass (default: fm.settings.batch_size)"
    )
    p.add_argument(
        "--precision", choices=["float32", "bfloat16", "float16"], default="float32", help="autocast precision"
    )
    p.add_argument("--key-added", default=None, help="obsm key (default: X_<family>)")
    _cli_dask.add_arguments(p)
    _common(p)
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser(
        "benchmark-integration",
        help="scib-metrics scores of embeddings (fm.metrics.integration)",
        description=(
            "Score obsm embeddings with scib-metrics' Benchmarker next to a random floor and an unintegrated PCA;\n"
            "writes the tidy table (embedding, metric, metric_type, value[, ci_low, ci_high, se]) as CSV."
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("input", type=Path, metavar="IN", help="input .h5ad or .h5mu with embeddings in obsm")
    p.add_argument("output", type=Path, metavar="OUT.csv", help="output CSV")
    p.add_argument("--batch-key", required=True, help="obs column with the batch")
    p.add_argument("--label-key", required=True, help="obs column with the cell-type labels")
    p.add_argument(
        "--embeddings", nargs="+", default=None, help="obsm keys to score (default: every X_* key but X_umap/X_tsne)"
    )
    p.add_argument(
        "--baselines", nargs="*", choices=["random", "pca"], default=["random", "pca"], help="reference rows to add"
    )
    p.add_argument("--layer", default=None, help="layer for the unintegrated PCA (default: X)")
    p.add_argument("--n-boot", type=int, default=0, help="half-sample resamples for intervals (0: none)")
    p.add_argument("--neighbors", choices=["pynndescent", "exact"], default="pynndescent", help="kNN search")
    p.add_argument("--seed", type=int, default=0, help="seed of the random floor, PCA and resamples")
    _common(p)
    p.set_defaults(func=_cmd_benchmark_integration)

    p = sub.add_parser(
        "benchmark-perturbation",
        help="perturbation predictors on repeated splits (fm.tl.benchmark_perturbation)",
        description=(
            "Pseudobulk the cells per condition, split the conditions per seed, fit every method on the train\n"
            "conditions and score the test ones; writes the tidy table (method, seed, condition, metric, value)."
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("input", type=Path, metavar="IN", help="input .h5ad or .h5mu (cells x genes, or a pseudobulk)")
    p.add_argument("output", type=Path, metavar="OUT.csv", help="output CSV")
    p.add_argument("--perturbation-key", default="condition", help="obs column with control / GENE / GENE1+GENE2")
    p.add_argument("--control", default="control", help="label of the control cells")
    p.add_argument("--methods", nargs="+", default=["control", "mean", "additive", "linear"], help="predictors")
    p.add_argument(
        "--split", choices=["random", "simulation", "double"], default="random", help="split of the conditions"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="one split and fit per seed")
    _common(p)
    p.set_defaults(func=_cmd_benchmark_perturbation)
    return parser


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scfmkit`` command line; returns the exit status (0 on success).

    Parameters
    ----------
    argv
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    0 on success, 1 on bad input or a failed run (one line ``scfmkit: error: ...`` on stderr), 2 on a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.debug else logging.WARNING, format="%(name)s: %(message)s"
    )
    from ._settings import settings

    if not args.progress:
        settings.progress = False
    try:
        if args.debug:
            args.func(args)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"{PROG}: error: {_message(err)}", file=sys.stderr)
        return 1
    return 0


def _entry() -> None:  # pragma: no cover - console script / python -m
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
