"""Integration scoring and kNN label transfer: time and peak memory.

1. ``fm.metrics.integration`` vs ``scib_metrics.benchmark.Benchmarker`` called directly on the same synthetic data
   (same embeddings, default metrics, pynndescent neighbours, Benchmarker's own PCA as the unintegrated embedding),
   each in a fresh process (same imports and JIT state), alternating, for 5,000 and 50,000 cells.
2. ``weighted_knn_transfer`` (exact, chunked) for 10,000 query x 100,000 reference cells, next to sklearn's brute-force
   ``KNeighborsTransformer`` (what scArches' weighted kNN uses) for the neighbour search alone.

Prints JSON lines and writes ``<out>/bench_integration.jsonl``. Run with ``nox -s bench`` or
``python benchmarks/bench_integration.py --out out/bench`` (``--sizes 5000`` to skip the 50,000-cell run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_GENES = 500
N_TYPES = 8
N_BATCHES = 3
DIM = 30


def synthetic(n_cells: int, seed: int = 0):
    """Log-normalised counts (3 batches, 8 types) and three 30-d embeddings of different quality."""
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    types = rng.integers(0, N_TYPES, n_cells)
    batch = rng.integers(0, N_BATCHES, n_cells)
    mu = np.exp(rng.normal(-1, 1, (N_TYPES, N_GENES)))
    shift = np.exp(rng.normal(0, 0.3, (N_BATCHES, N_GENES)))
    X = rng.poisson(mu[types] * shift[batch]).astype(np.float32)
    X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    obs = pd.DataFrame(
        {"cell_type": [f"t{t}" for t in types], "batch": [f"b{b}" for b in batch]},
        index=[f"c{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(sparse.csr_matrix(X), obs=obs)
    t_c = rng.normal(0, 3, (N_TYPES, DIM))
    b_c = rng.normal(0, 3, (N_BATCHES, DIM))
    noise = lambda: rng.normal(0, 1, (n_cells, DIM))  # noqa: E731
    adata.obsm["X_integrated"] = (t_c[types] + noise()).astype(np.float32)
    adata.obsm["X_batchy"] = (t_c[types] + b_c[batch] + noise()).astype(np.float32)
    adata.obsm["X_noisy"] = (0.3 * t_c[types] + 2 * noise()).astype(np.float32)
    return adata


EMBEDDINGS = ["X_integrated", "X_batchy", "X_noisy"]


def child(mode: str, n_cells: int) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    adata = synthetic(n_cells)
    if mode == "wrapper":
        import scfmkit as fm

        fm.settings.progress = False
        t = time.perf_counter()
        fm.metrics.integration(adata, EMBEDDINGS, batch_key="batch", label_key="cell_type", baselines=())
        wall = time.perf_counter() - t
    elif mode == "direct":
        from scib_metrics.benchmark import Benchmarker

        t = time.perf_counter()
        bm = Benchmarker(adata, batch_key="batch", label_key="cell_type", embedding_obsm_keys=EMBEDDINGS,
                         progress_bar=False)  # fmt: skip
        bm.benchmark()
        bm.get_results(min_max_scale=False)
        wall = time.perf_counter() - t
    elif mode == "knn":
        from scfmkit._knn import weighted_knn_transfer

        rng = np.random.default_rng(0)
        n_ref, n_q = n_cells, n_cells // 10
        centers = rng.normal(0, 3, (20, DIM))
        lab_r = rng.integers(0, 20, n_ref)
        ref = (centers[lab_r] + rng.normal(0, 1, (n_ref, DIM))).astype(np.float32)
        query = (centers[rng.integers(0, 20, n_q)] + rng.normal(0, 1, (n_q, DIM))).astype(np.float32)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        weighted_knn_transfer(query, ref, lab_r.astype(str), k=15, uncertainty_threshold=0.5, show_progress=False)
        wall = time.perf_counter() - t
        print(json.dumps({"wall_s": wall, "rss_before_gib": rss0 / 1024**2,
                          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))  # fmt: skip
        return
    elif mode == "knn-sklearn":
        from sklearn.neighbors import KNeighborsTransformer

        rng = np.random.default_rng(0)
        n_ref, n_q = n_cells, n_cells // 10
        centers = rng.normal(0, 3, (20, DIM))
        ref = (centers[rng.integers(0, 20, n_ref)] + rng.normal(0, 1, (n_ref, DIM))).astype(np.float32)
        query = (centers[rng.integers(0, 20, n_q)] + rng.normal(0, 1, (n_q, DIM))).astype(np.float32)
        t = time.perf_counter()
        KNeighborsTransformer(n_neighbors=15, mode="distance", algorithm="brute", metric="euclidean", n_jobs=-1).fit(
            ref
        ).kneighbors(query)
        wall = time.perf_counter() - t
    else:
        raise ValueError(mode)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB on Linux
    print(json.dumps({"wall_s": wall, "peak_rss_gib": peak}))


def run_child(mode: str, n_cells: int, timeout: float | None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--n", str(n_cells)]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timed_out_after_s": timeout}
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--quick", action="store_true", help="1,000 cells and a 10,000-cell reference (smoke run)")
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000], help="cells for integration scoring")
    p.add_argument("--repeats", type=int, default=2, help="alternating wrapper/direct pairs per size")
    p.add_argument("--knn-reference", type=int, default=100_000, help="reference cells (query = 1/10)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per child run before giving up")
    p.add_argument("--skip", nargs="*", default=[], choices=["integration", "knn", "knn-sklearn"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.n)
        return
    sizes = [1000] if args.quick else args.sizes
    n_ref = 10_000 if args.quick else args.knn_reference
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_integration.jsonl"
    path.write_text("")

    def record(what: str, **values) -> None:
        line = json.dumps({"what": what, **values}, default=float)
        print(line, flush=True)
        with path.open("a") as f:
            f.write(line + "\n")

    record("machine", cpu=platform.machine(), n_cpu=os.cpu_count(), load_avg_1m=os.getloadavg()[0],
           python=sys.version.split()[0])  # fmt: skip
    if "integration" not in args.skip:
        for n in sizes:
            runs = {"wrapper": [], "direct": []}
            for r in range(args.repeats):
                order = ("wrapper", "direct") if r % 2 == 0 else ("direct", "wrapper")
                for mode in order:
                    res = run_child(mode, n, args.timeout)
                    runs[mode].append(res)
                    record(f"integration_{mode}", n_cells=n, n_embeddings=len(EMBEDDINGS), repeat=r, **res)
                    if "timed_out_after_s" in res:
                        break
                if any("timed_out_after_s" in x for v in runs.values() for x in v):
                    break
            ok = all(runs[m] and all("wall_s" in x for x in runs[m]) for m in runs)
            if ok:
                w = min(x["wall_s"] for x in runs["wrapper"])
                d = min(x["wall_s"] for x in runs["direct"])
                mw = max(x["peak_rss_gib"] for x in runs["wrapper"])
                md = max(x["peak_rss_gib"] for x in runs["direct"])
                record("integration_ratio", n_cells=n, best_wall_wrapper_s=w, best_wall_direct_s=d,
                       time_ratio_wrapper_over_direct=w / d, peak_rss_ratio_wrapper_over_direct=mw / md)  # fmt: skip
    if "knn" not in args.skip:
        record("knn_transfer", n_reference=n_ref, n_query=n_ref // 10, dim=DIM, k=15,
               **run_child("knn", n_ref, args.timeout))  # fmt: skip
    if "knn-sklearn" not in args.skip:
        record("knn_sklearn_bruteforce_search_only", n_reference=n_ref, n_query=n_ref // 10, dim=DIM, k=15,
               **run_child("knn-sklearn", n_ref, args.timeout))  # fmt: skip


if __name__ == "__main__":
    main()
