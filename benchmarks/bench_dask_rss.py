"""RSS of each dask worker over a blockwise run: does it grow with the number of blocks (cells)?

Tiles real cells to ``--cells`` cells in a zarr store (as ``bench_dask.py``), starts ``--workers`` workers with
``scfmkit._dask.local_cluster`` and embeds them with the tiny random-weight Geneformer into a zarr block store, while a
thread samples every worker's ``VmRSS`` (``/proc/self/status``) every ``--every`` seconds. With ``--trim`` each sample
also calls glibc's ``malloc_trim(0)`` in the workers and records the RSS after it (what is left is live memory; the
difference is freed heap glibc had kept). Prints one line per sample, then ``VmHWM`` at the end, and after a trim.

    python benchmarks/bench_dask_rss.py --cells 200000 --workers 2
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import tempfile
import threading
import time
from pathlib import Path

from _common import SHARED
from bench_dask import TINY, tiled


def status() -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of this process in MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def trimmed() -> dict[str, float]:
    """``status()`` after handing glibc's free heap back to the OS."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return status()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--block-size", type=int, default=2048)
    p.add_argument("--every", type=float, default=8.0, help="seconds between samples")
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) in the workers at each sample")
    args = p.parse_args()
    import zarr
    from anndata.experimental import read_elem_lazy, read_lazy
    from distributed import Client

    import scfmkit as fm
    from scfmkit import _dask
    from scfmkit.models.geneformer import write_random_checkpoint

    fm.settings.progress = False
    work = Path(tempfile.mkdtemp(prefix="scfmkit-bench-dask-rss-"))
    cluster = client = None
    try:
        ckpt = write_random_checkpoint(work / "ckpt", SHARED / "models" / "geneformer-v1", **TINY)
        adata = tiled(args.cells, 256)
        adata.write_zarr(work / "in.zarr")
        lazy = read_lazy(str(work / "in.zarr"))
        lazy.X = read_elem_lazy(zarr.open_group(str(work / "in.zarr"))["X"], chunks=(args.block_size, -1))
        model = fm.models.load(str(ckpt), weights="random")
        cluster = _dask.local_cluster(args.workers)
        client = Client(cluster)
        fm.tl.embed(adata[:200].copy(), model, block_size=100, copy=True)  # every worker loads the model
        names = {w: f"w{i}" for i, w in enumerate(sorted(client.run(status)))}
        n_blocks = -(-args.cells // args.block_size)
        print(f"{args.cells} cells, {n_blocks} blocks of {args.block_size}, {args.workers} workers", flush=True)
        stop = threading.Event()
        t0 = time.perf_counter()

        def sample() -> None:
            while not stop.is_set():
                rss = client.run(status)
                line = {names[w]: round(v["VmRSS"]) for w, v in rss.items()}
                if args.trim:
                    line.update({f"{names[w]}_trimmed": round(v["VmRSS"]) for w, v in client.run(trimmed).items()})
                print(f"t={time.perf_counter() - t0:6.1f}s RSS MiB {line}", flush=True)
                stop.wait(args.every)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        fm.tl.embed(lazy, model, store=str(work / "emb.zarr"), copy=True)
        stop.set()
        thread.join()
        print(f"run {time.perf_counter() - t0:.1f} s", flush=True)
        end = client.run(status)
        print("end MiB", {names[w]: {k: round(x) for k, x in v.items()} for w, v in end.items()})
        trim = client.run(trimmed)
        print("after malloc_trim MiB", {names[w]: round(v["VmRSS"]) for w, v in trim.items()})
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
