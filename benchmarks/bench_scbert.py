"""scBERT embedding throughput and memory: scfmkit vs the reference forward on the same checkpoint and cells, fp32 CPU.

A seeded random checkpoint in the released layout (16,906 genes of a stand-in gene list, gene2vec 16,906 x 200,
7 expression tokens; depth and heads set by the options, the released model has 6 x 10) embeds real cells of
``celltypist_sample_counts_559cells.h5ad`` (raw counts). Every cell is 16,907 positions, whatever its genes.

Both sides run in a subprocess each, in the same run, so that cells/s and peak RSS compare like with like. The
reference side runs when SCFMKIT_REFERENCE_SCBERT (the ``TencentAILabHealthcare/scBERT`` checkout, the folder with
``performer_pytorch/``) and SCFMKIT_REFERENCE_PYTHON (an environment with torch, einops, local-attention, scanpy) are
set, through ``_scbert_reference.py``: ``predict.py``'s loop, one cell at a time. scfmkit runs with ``--batch-size``
cells per forward pass (default 1, like the reference; the fused inference path attends one cell at a time, 512
positions a block, whatever the batch). Reported
per side: embedding seconds and cells/s (the reference's preprocessing and both loads timed apart; scfmkit's
``embed_cells`` bins the cells itself, so its seconds include that, and ``forward_cells_per_s`` leaves out the time
of a separate ``tokenize`` of the same cells), peak RSS of the process; for
scfmkit also the peak RSS of a process that only loads the model (so the difference is the forward's working
memory at 16,906 genes), and the largest difference between the two sides' mean-pooled embeddings.

Fraction of the matmul peak: ``flops_per_cell`` counts every matrix product of the reference's forward from the
checkpoint's shapes (``return_encodings=True``, so no logits head), per position and layer, with ``D`` the model
width, ``h`` heads of ``d``, ``m`` random features and ``F = ff_mult * D``::

    2 D (3 h d)     q, k, v projections
  + 2 (h d) D       output projection
  + 2 D F + 2 F D   feed-forward
  + 2 (2 h d m)     random features of q and of k (``einsum('...id,...jd->...ij')``)
  + 2 h m d         context k'^T v
  + 2 h m d         q' context
  + 2 h m           normaliser q' . sum_n k'

times ``n = genes + 1`` positions and ``depth`` layers (released shapes: 3,031,240 x 16,907 x 6 = 3.07e11 FLOP a
cell). Elementwise work (exp, maxima, LayerNorm, GELU, additions) is not counted. The fp32 peak is
``_common.matmul_peak_gflops`` (a 2048^3 ``torch.mm``) measured in the same run with the same torch thread count
as both workers (``--threads``, passed to them as ``OMP_NUM_THREADS``; default: torch's own choice, which follows
the CPU affinity, so ``taskset -c 1`` gives 1). Each side's fraction is ``flops_per_cell * cells_per_s / peak``.

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
    p.add_argument("--threads", type=int, help="torch threads of both sides and of the peak (default: torch's)")
    p.add_argument("--worker", choices=["embed", "load"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--h5ad", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def flops_per_cell(cfg) -> int:
    """Matmul FLOPs of one cell's forward (``PerformerConfig`` shapes; the formula is in the module docstring)."""
    dim, hd, h, d, m, ff = cfg.dim, cfg.heads * cfg.dim_head, cfg.heads, cfg.dim_head, cfg.n_features, cfg.ff_mult
    per_position = 2 * dim * 3 * hd + 2 * hd * dim + 4 * dim * ff * dim + 4 * h * d * m + 4 * h * m * d + 2 * h * m
    return per_position * cfg.max_seq_len * cfg.depth


def worker(args: argparse.Namespace) -> None:
    """One side of the measurement in its own process (peak RSS is the process's)."""
    import anndata as ad
    import torch

    import scfmkit as fm
    from scfmkit.models.scbert import load_scbert

    fm.settings.progress = False
    if args.threads:
        torch.set_num_threads(args.threads)
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
                "torch_threads": torch.get_num_threads(),
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

    from scfmkit.models._performer import PerformerConfig
    from scfmkit.models._scbert_io import stand_in_gene_list, write_random_checkpoint

    if args.quick:
        args.n_cells, args.depth, args.heads = 3, 1, 10
    if args.threads:
        torch.set_num_threads(args.threads)
    rec = Recorder(args.out, "scbert")
    rec.record("load_average", start=os.getloadavg(), command=" ".join(sys.argv))
    peak = matmul_peak_gflops()
    rec.record("matmul_peak_fp32", gflops=round(peak, 1), torch_threads=torch.get_num_threads())
    work = args.out / "scbert_work"
    work.mkdir(parents=True, exist_ok=True)
    genes = stand_in_gene_list(csv_path=SHARED / "data" / "gencode_v44_gene_id2name.csv")
    ckpt = write_random_checkpoint(work / "ckpt", genes=genes, seed=0, depth=args.depth, heads=args.heads)
    src = ad.read_h5ad(SHARED / "data" / "celltypist_sample_counts_559cells.h5ad")
    n = args.n_cells
    h5ad = work / f"celltypist_{n}.h5ad"
    src[np.sort(np.random.default_rng(0).choice(src.n_obs, n, replace=False))].copy().write_h5ad(h5ad)
    common = {"n_cells": n, "n_genes": len(genes), "depth": args.depth, "heads": args.heads, "precision": "fp32"}
    flops = flops_per_cell(PerformerConfig(max_seq_len=len(genes) + 1, depth=args.depth, heads=args.heads))
    rec.record("flops_per_cell", flops=flops)

    def frac(cells_per_s: float) -> float:
        return round(flops * cells_per_s / 1e9 / peak, 3)

    me = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), "--ckpt", str(ckpt)]
    me += ["--h5ad", str(h5ad), "--batch-size", str(args.batch_size)]
    me += ["--threads", str(args.threads)] if args.threads else []
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else {}
    env = {**os.environ, **threads}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])
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
        gflops=round(flops * n / ours["embed_seconds"] / 1e9, 1),
        frac_of_matmul_peak=frac(n / ours["embed_seconds"]),
        torch_threads=ours["torch_threads"],
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
    wall, rss_ref, stdout = run_measured(cmd, env={**os.environ, **threads})
    ref = json.loads(stdout.strip().splitlines()[-1])
    rec.record(
        "embed",
        impl="reference",
        **common,
        batch_size=1,
        seconds=round(ref["embed_seconds"], 2),
        cells_per_s=round(n / ref["embed_seconds"], 3),
        gflops=round(flops * n / ref["embed_seconds"] / 1e9, 1),
        frac_of_matmul_peak=frac(n / ref["embed_seconds"]),
        torch_threads=ref.get("torch_threads"),
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
    rec.record("load_average", end=os.getloadavg())


if __name__ == "__main__":
    main()
