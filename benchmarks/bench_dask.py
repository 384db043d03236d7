"""Blockwise embeddings on dask.distributed: cells/s with 1 and 2 worker processes, scaling, peak RSS, overhead.

Real cells (the 559-cell celltypist sample on its most-detected genes) are tiled to ``--cells`` cells in an AnnData
zarr store, read lazily (``anndata.experimental.read_lazy``) and embedded with a random-weight Geneformer checkpoint
(``--model tiny``: 2 layers x 32 wide, the test model; ``--model v1``: the V1 architecture, 6 x 256) into a zarr
block store. The single-process path embeds the same cells in memory with one torch thread, as each dask worker has
one (distributed sets OMP_NUM_THREADS=1 in its workers; scfmkit gives the task thread that budget; the threads each
arm ran with are recorded). Clusters come from ``scfmkit._dask.local_cluster`` (what ``--workers N`` starts: profiler
off, no ``MALLOC_TRIM_THRESHOLD_``); their start-up and the workers' model load are timed apart (``dask_start_up``),
as is the single process's model warm-up: the timed runs are the same cells on an existing cluster. The arms
(single process, 1 worker, 2 workers) run interleaved ``--repeats`` times; overhead = dask vs the single process of
the same repeat, median over repeats.
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
    p.add_argument("--repeats", type=int, default=3, help="arms interleaved this many times; medians reported")
    p.add_argument(
        "--single-cells",
        type=int,
        default=None,
        help="the single-process arm embeds only the first N cells (its cost per cell is scaled to all cells for "
        "the overhead; for the largest sizes, where that arm would take longest)",
    )
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
    """Peak RSS of this process since it started (GiB): ``VmHWM`` of ``/proc/self/status`` where there is one.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it over a fork + exec, so a worker spawned by a large client
    process would report the client's RSS at that moment (measured: 4.29 GiB per worker at 1,000,000 cells, the
    client's figure).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def cpu_seconds() -> float:
    """CPU time (user + system) of this process: robust to other load on a shared machine, unlike wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def task_torch_threads(ref) -> int:
    """torch's threads as a task sees them once it has its model (in the worker's task thread)."""
    import torch

    from scfmkit import _dask

    _dask.cached_model(ref)
    return torch.get_num_threads()


def main() -> None:
    args = parse()
    import torch
    import zarr
    from anndata.experimental import read_elem_lazy, read_lazy
    from distributed import Client

    import scfmkit as fm
    from scfmkit import _dask
    from scfmkit.models.geneformer import write_random_checkpoint

    fm.settings.progress = False
    n_cells = args.cells or (20_000 if args.quick else 1_000_000)
    rec = Recorder(args.out, f"dask_{args.model}_{n_cells}")
    work = Path(tempfile.mkdtemp(prefix="scfmkit-bench-dask-"))
    clusters: dict[int, tuple] = {}
    try:
        ckpt = write_random_checkpoint(
            work / "ckpt", SHARED / "models" / "geneformer-v1", **(TINY if args.model == "tiny" else V1)
        )
        adata = tiled(n_cells, args.genes)
        adata.write_zarr(work / "in.zarr")
        lazy = read_lazy(str(work / "in.zarr"))
        lazy.X = read_elem_lazy(zarr.open_group(str(work / "in.zarr"))["X"], chunks=(args.block_size, -1))
        common = {"cells": n_cells, "genes": args.genes, "model": args.model, "block_size": args.block_size}
        rec.record("load_average_at_start", **common, value=os.getloadavg())

        model = fm.models.load(str(ckpt), weights="random")
        torch.set_num_threads(1)  # after the load, which can reset torch's threads
        ref = _dask.ModelRef.of(model)
        warm = adata[:200].copy()  # start-up (imports, model load, compiled kernels) is timed apart from the run
        t = time.perf_counter()
        model.embed_cells(warm)
        rec.record("single_process_start_up", **common, seconds=round(time.perf_counter() - t, 2))
        for n_workers in args.workers:  # all clusters up before the timed runs; they idle while another arm runs
            t = time.perf_counter()
            cluster = _dask.local_cluster(n_workers)
            cluster_seconds = time.perf_counter() - t
            client = Client(cluster, set_as_default=False)
            clusters[n_workers] = (cluster, client)
            t = time.perf_counter()
            with client.as_current():
                fm.tl.embed(warm, model, block_size=100, copy=True)  # every worker loads the model, not timed
            threads = sorted(client.run(lambda: 0).keys())
            tt = {w: client.submit(task_torch_threads, ref, pure=False, workers=[w]).result() for w in threads}
            rec.record(
                "dask_start_up",
                **common,
                workers=n_workers,
                cluster_start_seconds=round(cluster_seconds, 2),
                model_load_and_warm_up_seconds=round(time.perf_counter() - t, 2),
                torch_threads_in_task=sorted(tt.values()),
            )

        rows: dict[str, list] = {"single": [], **{f"dask{n}": [] for n in args.workers}}
        single = None
        n_single = min(args.single_cells or n_cells, n_cells)
        single_cells = adata if n_single == n_cells else adata[:n_single].copy()
        scale = n_cells / n_single  # the single process's time per cell, scaled to all cells
        for rep in range(args.repeats):  # arms interleaved, so that a change of load hits all of them
            t, c = time.perf_counter(), cpu_seconds()
            single = model.embed_cells(single_cells)[0]
            w, c = time.perf_counter() - t, cpu_seconds() - c
            rows["single"].append((w * scale, c * scale))
            rec.record(
                "single_process",
                **common,
                repeat=rep,
                single_cells=n_single,
                torch_threads=torch.get_num_threads(),
                seconds=round(w, 2),
                cpu_seconds=round(c, 2),
                cells_per_s=round(n_single / w, 1),
            )
            for n_workers, (_, client) in clusters.items():
                store = work / f"emb_{n_workers}_{rep}.zarr"
                with client.as_current():
                    cpu0 = sum(client.run(cpu_seconds).values())
                    t = time.perf_counter()
                    out = fm.tl.embed(lazy, model, store=str(store), copy=True)
                    wall = time.perf_counter() - t
                    cpu = sum(client.run(cpu_seconds).values()) - cpu0
                    emb = out.obsm["X_geneformer"].compute()
                    rows[f"dask{n_workers}"].append((wall, cpu))
                    rec.record(
                        "dask",
                        **common,
                        repeat=rep,
                        workers=n_workers,
                        seconds=round(wall, 2),
                        cpu_seconds_all_workers=round(cpu, 2),
                        cells_per_s=round(n_cells / wall),
                        max_abs_diff_vs_single=float(np.abs(emb[:n_single] - single).max()),
                        load_average=os.getloadavg(),
                    )
                    if rep == 0:
                        t = time.perf_counter()
                        fm.tl.embed(lazy, model, store=str(store), copy=True)
                        rec.record(
                            "dask_rerun_finished_store",
                            **common,
                            workers=n_workers,
                            seconds=round(time.perf_counter() - t, 2),
                        )
                shutil.rmtree(store, ignore_errors=True)
        med = {k: (float(np.median([w for w, _ in v])), float(np.median([c for _, c in v]))) for k, v in rows.items()}
        ratios = {  # per repeat, then the median: robust to the load changing between repeats
            k: {
                "wall_overhead_vs_single": round(
                    float(np.median([w / s[0] - 1 for (w, _), s in zip(v, rows["single"], strict=True)])), 3
                ),
                "cpu_overhead_vs_single": round(
                    float(np.median([c / s[1] - 1 for (_, c), s in zip(v, rows["single"], strict=True)])), 3
                ),
            }
            for k, v in rows.items()
            if k != "single"
        }
        for n_workers, (_, client) in clusters.items():
            rss = sorted(client.run(worker_rss_gib).values())
            rec.record(
                "dask_summary",
                **common,
                workers=n_workers,
                repeats=args.repeats,
                median_seconds=round(med[f"dask{n_workers}"][0], 2),
                median_cells_per_s=round(n_cells / med[f"dask{n_workers}"][0], 1),
                peak_rss_gib_per_worker=[round(r, 3) for r in rss],
                **ratios[f"dask{n_workers}"],
            )
        rec.record(
            "single_summary",
            **common,
            repeats=args.repeats,
            single_cells=n_single,
            median_seconds_scaled_to_all_cells=round(med["single"][0], 2),
            median_cells_per_s=round(n_cells / med["single"][0], 1),
            median_cpu_seconds=round(med["single"][1], 2),
            peak_rss_gib=round(worker_rss_gib(), 3),
        )
        if 1 in clusters and 2 in clusters:
            eff = [w1 / (2 * w2) for (w1, _), (w2, _) in zip(rows["dask1"], rows["dask2"], strict=True)]
            rec.record(
                "scaling_efficiency_2_workers",
                **common,
                value=round(float(np.median(eff)), 3),
                n_cpu=os.cpu_count(),
                load_average_at_end=os.getloadavg(),
            )
        rec.record("load_average_at_end", **common, value=os.getloadavg())
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
