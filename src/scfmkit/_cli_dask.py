"""``scfmkit embed IN.zarr OUT.zarr``: the blockwise path of the ``embed`` subcommand (dask, resumable store)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "embed_zarr", "wants_zarr"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the blockwise path."""
    p.add_argument(
        "--scheduler", default=None, help="address of a running dask scheduler (IN.zarr only; e.g. tcp://host:8786)"
    )
    p.add_argument("--workers", type=int, default=None, help="local dask cluster of N worker processes (IN.zarr only)")
    p.add_argument("--block-size", type=int, default=None, help="cells per dask task (default: the zarr row chunks)")


def wants_zarr(args: argparse.Namespace) -> bool:
    """Whether ``embed`` runs blockwise: a ``.zarr`` input (or dask options given)."""
    return args.input.suffix == ".zarr" or args.scheduler is not None or args.workers is not None


def embed_zarr(args: argparse.Namespace, options: dict[str, Any], error: type[Exception]) -> None:
    """Read ``IN.zarr`` lazily and write the embeddings block by block into the store ``OUT.zarr`` (resumable)."""
    import scfmkit as fm

    from . import _dask

    log = logging.getLogger("scfmkit")
    inp, out = Path(args.input), Path(args.output)
    if inp.suffix != ".zarr" or not inp.is_dir():
        msg = f"the blockwise path (--scheduler/--workers) reads an AnnData .zarr folder; {str(inp)!r} is not one."
        raise error(msg)
    if out.suffix != ".zarr":
        msg = f"output {str(out)!r} must end in .zarr (the embedding store, resumable by running the command again)."
        raise error(msg)
    if args.scheduler is not None and args.workers is not None:
        msg = "give --scheduler ADDRESS or --workers N, not both."
        raise error(msg)
    if args.workers is not None and args.workers < 1:
        msg = f"--workers must be a positive integer, got {args.workers}."
        raise error(msg)
    from anndata.experimental import read_lazy

    adata = read_lazy(str(inp))
    try:
        client, cluster = _dask.connect(args.scheduler, n_workers=args.workers or 1)
    except ConnectionError as err:
        raise error(str(err)) from None
    try:
        log.info("dask dashboard: %s", client.dashboard_link)
        fm.tl.embed(
            adata,
            args.model,
            weights=args.weights,
            layer=args.layer,
            gene_key=args.gene_key,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
            mod=None,
            key_added=args.key_added,
            block_size=args.block_size,
            store=str(out),
            **options,
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    log.info("wrote %s", out)
