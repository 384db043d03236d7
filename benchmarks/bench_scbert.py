"""scBERT embedding throughput and memory: scfmkit vs the reference forward on the same checkpoint and cells, fp32 CPU.

A seeded random checkpoint in the released layout (16,906 genes of a stand-in gene list, gene2vec 16,906 x 200,
7 expression tokens; depth and heads set by the options, the released model has 6 x 10) embeds real cells of
``celltypist_sample_counts_559cells.h5ad`` (raw counts). Every cell is 16,907 positions, whatever its genes.

Both sides run in a subprocess each, in the same run, so that cells/s and peak RSS compare like with like. The
reference side runs when SCFMKIT_REFERENCE_SCBERT (the ``TencentAILabHealthcare/scBERT`` checkout, the folder with
``performer_pytorch/``) and SCFMKIT_REFERENCE_PYTHON (an environment with torch, einops, local-attention, scanpy) are
set, through ``_scbert_reference.py``: ``predict.py``'s loop, one cell at a time. scfmkit runs with ``--batch-size``
cells per forward pass (default 1, like the reference; attention runs one cell at a time above 2**26 random-feature
entries either way). Reported
per side: embedding seconds and cells/s (the reference's preprocessing and both loads timed apart; scfmkit's
``embed_cells`` bins the cells itself, so its seconds include that, and ``forward_cells_per_s`` leaves out the time
of a separate ``tokenize`` of the same cells), peak RSS of the process; for
scfmkit also the peak RSS of a process that only loads the model (so the difference is the forward's working
memory at 16,906 genes), and the largest difference between the two sides' mean-pooled embeddings.

Run with ``nox -s bench`` or ``python benchmarks/bench_scbert.py --out out/bench [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import SHARED, Recorder, matmul_peak_gflops, run_measured

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for the JSON-lines results")
    p.add_argument("--quick", action="store_true", help="3 cells, 1 layer of the released 10 heads (smoke run)")
    p.add_argument("--n-cells", type=int, default=32)
    p.add_argument("--depth", type=int, default=6, help="the released model has 6")
    p.add_argument("--heads", type=int, default=10, help="the released model has 10")
    p.add_argument("--batch-size", type=int, default=1, help="cells per forward pass (the reference: 1)")
    p.add_argument("--worker", choices=["embed", "load"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--h5ad", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def worker(args: argparse.Namespace) -> None:
    """One side of the measurement in its own process (peak RSS is the process's)."""
    import anndata as ad

    import scfmkit as fm
    from scfmkit.models.scbert import load_scbert

    fm.settings.progress = False
    t0 = time.perf_counter()
    model = load_scbert(args.ckpt, device="cpu")
    t1 = time.perf_counter()
    if args.worker == "load":
        print(json.dumps({"load_seconds": t1 - t0}))
        return
    cells = ad.read_h5ad(args.h5ad)
    t2 = time.perf_counter()
    tokens, _ = model.tokenize(cells)
    t3 = time.perf_counter()
    emb, params = model.embed_cells(cells, batch_size=args.batch_size)
    t4 = time.perf_counter()
    np.save(args.out / "scbert_work" / "ours_emb.npy", emb)
    print(
        json.dumps(
            {
                "load_seconds": t1 - t0,
                "tokenize_seconds": t3 - t2,
                "embed_seconds": t4 - t3,
                "genes_present": params["n_genes_matched"],
            }
        )
    )


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    import anndata as ad
    import torch

    from scfmkit.models._scbert_io import stand_in_gene_list, write_random_checkpoint

    if args.quick:
        args.n_cells, args.depth, args.heads = 3, 1, 10
    rec = Recorder(args.out, "scbert")
    rec.record("matmul_peak_fp32", gflops=round(matmul_peak_gflops(), 1), torch_threads=torch.get_num_threads())
    work = args.out / "scbert_work"
    work.mkdir(parents=True, exist_ok=True)
    genes = stand_in_gene_list(csv_path=SHARED / "data" / "gencode_v44_gene_id2name.csv")
    ckpt = write_random_checkpoint(work / "ckpt", genes=genes, seed=0, depth=args.depth, heads=args.heads)
    src = ad.read_h5ad(SHARED / "data" / "celltypist_sample_counts_559cells.h5ad")
    n = args.n_cells
    h5ad = work / f"celltypist_{n}.h5ad"
    src[np.sort(np.random.default_rng(0).choice(src.n_obs, n, replace=False))].copy().write_h5ad(h5ad)
    common = {"n_cells": n, "n_genes": len(genes), "depth": args.depth, "heads": args.heads, "precision": "fp32"}

    me = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), "--ckpt", str(ckpt)]
    me += ["--h5ad", str(h5ad), "--batch-size", str(args.batch_size)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    _, rss_load, _ = run_measured([*me, "--worker", "load"], env=env)
    wall, rss, stdout = run_measured([*me, "--worker", "embed"], env=env)
    ours = json.loads(stdout.strip().splitlines()[-1])
    rec.record(
        "embed",
        impl="scfmkit",
        **common,
        batch_size=args.batch_size,
        seconds=round(ours["embed_seconds"], 2),
        cells_per_s=round(n / ours["embed_seconds"], 3),
        forward_cells_per_s=round(n / (ours["embed_seconds"] - ours["tokenize_seconds"]), 3),
        tokenize_seconds=round(ours["tokenize_seconds"], 2),
        load_seconds=round(ours["load_seconds"], 2),
        rss_gib=round(rss, 2),
        rss_after_load_only_gib=round(rss_load, 2),
        genes_present=ours["genes_present"],
    )
    ref_dir, py = os.environ.get("SCFMKIT_REFERENCE_SCBERT"), os.environ.get("SCFMKIT_REFERENCE_PYTHON")
    if not (ref_dir and py):
        rec.record("embed", impl="reference", skipped="set SCFMKIT_REFERENCE_SCBERT and SCFMKIT_REFERENCE_PYTHON")
        return
    out_ref = work / "reference_emb.npy"
    cmd = [py, str(HERE / "_scbert_reference.py"), "--checkout", ref_dir, "--h5ad", str(h5ad), "--ckpt", str(ckpt)]
    cmd += ["--out", str(out_ref), "--depth", str(args.depth), "--heads", str(args.heads)]
    wall, rss_ref, stdout = run_measured(cmd)
    ref = json.loads(stdout.strip().splitlines()[-1])
    rec.record(
        "embed",
        impl="reference",
        **common,
        batch_size=1,
        seconds=round(ref["embed_seconds"], 2),
        cells_per_s=round(n / ref["embed_seconds"], 3),
        preprocess_seconds=round(ref["preprocess_seconds"], 2),
        load_seconds=round(ref["load_seconds"], 2),
        rss_gib=round(rss_ref, 2),
    )
    diff = float(np.abs(np.load(work / "ours_emb.npy") - np.load(out_ref)).max())
    rec.record(
        "embed_ratio",
        **common,
        speedup=round(ref["embed_seconds"] / ours["embed_seconds"], 2),
        speedup_forward_only=round(ref["embed_seconds"] / (ours["embed_seconds"] - ours["tokenize_seconds"]), 2),
        max_abs_diff_mean_embedding=diff,
    )


if __name__ == "__main__":
    main()
