"""Where the time of a blockwise embedding goes: per-run and per-block phases, against the single-process path.

The same tiled cells as ``bench_dask.py`` (zarr store read lazily, random-weight Geneformer), all in this process with
one torch thread: the per-run client work (input, fingerprints, the model's checks, store creation, graph build), then
every block's phases (read from zarr, AnnData, gene match, tokenise, forward pass, zarr write) timed one by one, and
the single-process ``embed_cells`` on the same cells. Then a 1-worker ``LocalCluster`` run (1 thread) with dask's task
stream: wall time minus the tasks' compute time is the scheduling/transfer cost.

    python benchmarks/bench_dask_phases.py --out out/bench --cells 20000 --model tiny
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import SHARED, Recorder
from bench_dask import TINY, V1, tiled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=256)
    p.add_argument("--model", choices=["tiny", "v1"], default="tiny")
    p.add_argument("--block-size", type=int, default=2048)
    args = p.parse_args()

    import dask
    import torch
    import zarr
    from anndata.experimental import read_elem_lazy, read_lazy
    from distributed import Client, LocalCluster, get_task_stream

    import scfmkit as fm
    from scfmkit import _blockwise as bw
    from scfmkit import _dask
    from scfmkit.models.geneformer import write_random_checkpoint

    fm.settings.progress = False
    dask.config.set({"distributed.worker.profile.enabled": False})
    rec = Recorder(args.out, f"dask_phases_{args.model}_{args.cells}")
    common = {"cells": args.cells, "model": args.model, "block_size": args.block_size}
    work = Path(tempfile.mkdtemp(prefix="scfmkit-bench-phases-"))
    try:
        ckpt = write_random_checkpoint(
            work / "ckpt", SHARED / "models" / "geneformer-v1", **(TINY if args.model == "tiny" else V1)
        )
        adata = tiled(args.cells, args.genes)
        adata.write_zarr(work / "in.zarr")
        lazy = read_lazy(str(work / "in.zarr"))
        lazy.X = read_elem_lazy(zarr.open_group(str(work / "in.zarr"))["X"], chunks=(args.block_size, -1))
        model = fm.models.load(str(ckpt), weights="random")
        torch.set_num_threads(1)  # after the load, which may reset it
        model.embed_cells(adata[:200].copy())  # warm-up
        rec.record("load_average_at_start", **common, value=os.getloadavg(), torch_threads=torch.get_num_threads())

        t = time.perf_counter()
        single = model.embed_cells(adata)[0]
        rec.record("single_process", **common, seconds=round(time.perf_counter() - t, 3))

        run: dict[str, float] = {}
        t = time.perf_counter()
        inp = bw._Input(lazy, None, None, None)
        run["input_and_fingerprint_inputs"] = time.perf_counter() - t
        t = time.perf_counter()
        ident = inp.identity()
        run["identity_sha256"] = time.perf_counter() - t
        options = bw._options(model, {"gene_key": None})
        t = time.perf_counter()
        model.embed_cells(inp.empty(), **options)
        run["model_checks_no_cells"] = time.perf_counter() - t
        t = time.perf_counter()
        store = work / "emb.zarr"
        _dask.BlockStore(
            store, "X_geneformer", {**ident, "model": model.name}, shape=(inp.n_obs, model.hidden_size), n_stats=2
        )
        run["store_create"] = time.perf_counter() - t
        t = time.perf_counter()
        blocks = inp.blocks()
        _ = [inp.obs(i) for i in range(len(inp.bounds))]
        run["graph_build"] = time.perf_counter() - t
        rec.record("per_run_client", **common, **{k: round(v, 4) for k, v in run.items()})

        ph = dict.fromkeys(["read", "anndata", "match", "tokenize", "embed", "write"], 0.0)
        out = np.empty_like(single)
        for i, (start, stop) in enumerate(inp.bounds):
            t0 = time.perf_counter()
            X = blocks[i].compute(scheduler="sync")
            t1 = time.perf_counter()
            blk = bw._block_adata(X, inp.obs(i), inp.var)
            t2 = time.perf_counter()
            opts = dict(options)
            match = bw._geneformer_match(model, blk, opts)
            t3 = time.perf_counter()
            toks = list(model.iter_tokenize(blk, input="counts", chunk_size=blk.n_obs, match=match))
            t4 = time.perf_counter()
            emb = np.concatenate([model.embed_tokens(tk, show_progress=False) for _, tk, _ in toks])
            t5 = time.perf_counter()
            _dask.write_block(str(store), "X_geneformer", i, start, emb, np.zeros(2))
            t6 = time.perf_counter()
            out[start:stop] = emb
            for k, a, b in zip(ph, [t0, t1, t2, t3, t4, t5], [t1, t2, t3, t4, t5, t6], strict=True):
                ph[k] += b - a
        total = sum(ph.values())
        rec.record(
            "per_block_phases_sum",
            **common,
            n_blocks=len(inp.bounds),
            **{k: round(v, 3) for k, v in ph.items()},
            total=round(total, 3),
            max_abs_diff_vs_single=float(np.abs(out - single).max()),
        )

        for env in ["scfmkit", "distributed-default"]:
            if env == "scfmkit":
                cluster = _dask.local_cluster(1)
            else:  # distributed's own worker environment (MALLOC_TRIM_THRESHOLD_=65536), profiler off
                cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster, set_as_default=False)
            with client.as_current():
                fm.tl.embed(adata[:200].copy(), model, block_size=100, copy=True)  # model load on the worker
                for kw in [{}, {"store": str(work / f"emb_{env}.zarr")}]:
                    t = time.perf_counter()
                    with get_task_stream(client) as ts:
                        fm.tl.embed(lazy, model, copy=True, **kw)
                    wall = time.perf_counter() - t
                    dur = sum(
                        s["stop"] - s["start"] for d in ts.data for s in d["startstops"] if s["action"] == "compute"
                    )
                    xfer = sum(
                        s["stop"] - s["start"] for d in ts.data for s in d["startstops"] if s["action"] != "compute"
                    )
                    rec.record(
                        "dask_1_worker",
                        **common,
                        worker_environ=env,
                        store=bool(kw),
                        wall=round(wall, 3),
                        task_compute=round(dur, 3),
                        task_transfer=round(xfer, 3),
                        n_tasks=len(ts.data),
                        not_in_tasks=round(wall - dur, 3),
                    )
            client.close()
            cluster.close()
        rec.record("load_average_at_end", **common, value=os.getloadavg())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
