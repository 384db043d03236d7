"""Blockwise embeddings on dask.distributed: cells/s with 1 and 2 worker processes, scaling, peak RSS, overhead.

Real cells (the 559-cell celltypist sample on its most-detected genes) are tiled to ``--cells`` cells in an AnnData
zarr store, read lazily (``anndata.experimental.read_lazy``) and embedded with a random-weight Geneformer checkpoint
(``--model tiny``: 2 layers x 32 wide, the test model; ``--model v1``: the V1 architecture, 6 x 256) into a zarr
block store. The single-process path embeds the same cells in memory with one torch thread, as each dask worker has
one (distributed sets OMP_NUM_THREADS=1 in its workers). Overhead = dask 1 worker vs that single process.
``nox -s bench`` runs the default size (1,000,000 cells); ``--quick`` 20,000 cells.

    python benchmarks/bench_dask.py --out out/bench --cells 20000 --model tiny
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import SHARED, Recorder
from scipy import sparse

TINY = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "seed": 0}
V1 = {"num_hidden_layers": 6, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512, "seed": 0}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--quick", action="store_true", help="20,000 cells")
    p.add_argument("--cells", type=int, default=None, help="number of cells (default 1,000,000; --quick 20,000)")
    p.add_argument("--genes", type=int, default=256, help="most-detected genes kept (tokens per cell at most)")
    p.add_argument("--model", choices=["tiny", "v1"], default="tiny")
    p.add_argument("--block-size", type=int, default=2048)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    return p.parse_args()


def tiled(n_cells: int, n_genes: int):
    import anndata as ad

    a = ad.read_h5ad(SHARED / "data" / "celltypist_sample_counts_559cells.h5ad")
    genes = np.sort(np.argsort(-np.asarray((a.X > 0).sum(axis=0)).ravel(), kind="stable")[:n_genes])
    a = a[:, genes].copy()
    a = a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()
    reps = -(-n_cells // a.n_obs)
    X = sparse.vstack([a.X] * reps, format="csr")[:n_cells]
    out = ad.AnnData(X, var=a.var[[]].copy())
    out.obs_names = [f"c{i}" for i in range(n_cells)]
    return out


def worker_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def cpu_seconds() -> float:
    """CPU time (user + system) of this process: robust to other load on a shared machine, unlike wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    args = parse()
    import torch
    from anndata.experimental import read_elem_lazy, read_lazy
    from distributed import Client, LocalCluster

    import scfmkit as fm
    from scfmkit.models.geneformer import write_random_checkpoint

    fm.settings.progress = False
    n_cells = args.cells or (20_000 if args.quick else 1_000_000)
    rec = Recorder(args.out, "dask")
    work = Path(tempfile.mkdtemp(prefix="scfmkit-bench-dask-"))
    try:
        ckpt = write_random_checkpoint(
            work / "ckpt", SHARED / "models" / "geneformer-v1", **(TINY if args.model == "tiny" else V1)
        )
        adata = tiled(n_cells, args.genes)
        adata.write_zarr(work / "in.zarr")
        lazy = read_lazy(str(work / "in.zarr"))
        import zarr

        lazy.X = read_elem_lazy(zarr.open_group(str(work / "in.zarr"))["X"], chunks=(args.block_size, -1))
        common = {"cells": n_cells, "genes": args.genes, "model": args.model, "block_size": args.block_size}

        torch.set_num_threads(1)
        warm = adata[:200].copy()  # start-up (imports, model load, compiled kernels) is timed apart from the run
        t = time.perf_counter()
        fm.tl.embed(warm, str(ckpt), copy=True)
        rec.record("single_process_start_up", **common, seconds=round(time.perf_counter() - t, 2))
        t, c = time.perf_counter(), cpu_seconds()
        single = fm.tl.embed(adata, str(ckpt), copy=True).obsm["X_geneformer"]
        t_single, c_single = time.perf_counter() - t, cpu_seconds() - c
        rec.record(
            "single_process",
            **common,
            torch_threads=1,
            seconds=round(t_single, 2),
            cpu_seconds=round(c_single, 2),
            cells_per_s=round(n_cells / t_single),
        )
        rates = {}
        import dask

        # the workers' statistical profiler samples every thread's stack many times a second: off for throughput
        dask.config.set({"distributed.worker.profile.enabled": False})
        for n_workers in args.workers:
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
            try:
                store = work / f"emb_{n_workers}.zarr"
                t = time.perf_counter()
                fm.tl.embed(warm, str(ckpt), block_size=100, copy=True)  # every worker loads the model, not timed
                rec.record("dask_start_up", **common, workers=n_workers, seconds=round(time.perf_counter() - t, 2))
                cpu0 = sum(client.run(cpu_seconds).values())
                t = time.perf_counter()
                out = fm.tl.embed(lazy, str(ckpt), store=str(store), copy=True, mod=None)
                wall = time.perf_counter() - t
                cpu = sum(client.run(cpu_seconds).values()) - cpu0
                emb = out.obsm["X_geneformer"].compute()
                rss = sorted(client.run(worker_rss_gib).values())
                rates[n_workers] = n_cells / wall
                rec.record(
                    "dask",
                    **common,
                    workers=n_workers,
                    seconds=round(wall, 2),
                    cpu_seconds_all_workers=round(cpu, 2),
                    cells_per_s=round(rates[n_workers]),
                    peak_rss_gib_per_worker=[round(r, 3) for r in rss],
                    max_abs_diff_vs_single=float(np.abs(emb - single).max()),
                    overhead_vs_single=round(wall / t_single - 1, 3) if n_workers == 1 else None,
                    cpu_overhead_vs_single=round(cpu / c_single - 1, 3),
                )
                t = time.perf_counter()
                fm.tl.embed(lazy, str(ckpt), store=str(store), copy=True, mod=None)
                rec.record(
                    "dask_rerun_finished_store", **common, workers=n_workers, seconds=round(time.perf_counter() - t, 2)
                )
            finally:
                client.close()
                cluster.close()
        if 1 in rates and 2 in rates:
            rec.record(
                "scaling_efficiency_2_workers",
                **common,
                value=round(rates[2] / (2 * rates[1]), 3),
                n_cpu=os.cpu_count(),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
