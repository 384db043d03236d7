"""scGPT embedding throughput: scfmkit vs the reference ``embed_data`` on the same checkpoint and cells, fp32 CPU.

A seeded random checkpoint in the released layout (real vocabulary and args.json, sizes set by the options) embeds
1,000 real cells of ``kang2018_ifnb_counts.h5ad`` (raw counts). The reference side runs when
SCFMKIT_REFERENCE_SCGPT (a checkout of bowang-lab/scGPT) and SCFMKIT_REFERENCE_PYTHON (a Python environment where
its model code imports) are set, through ``_scgpt_reference.py`` in a subprocess, in the same run, so that the ratio
compares like with like. Both use batch size 64 and max_length 1200 (the reference's defaults). Ours also runs with
``precision="bfloat16"`` (CPU autocast) on the same cells: speed-up, fraction of the bf16 matmul peak and cosine per
cell to float32 (on a CPU without ``avx512_bf16``/``amx_bf16`` on 8 cells only: bf16 is far slower there).

Run with ``nox -s bench`` or ``python benchmarks/bench_scgpt.py --out out/bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from _common import SHARED, Recorder, fast_bf16, matmul_peak_gflops, run_measured

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for the JSON-lines results")
    p.add_argument("--quick", action="store_true", help="200 cells (smoke run)")
    p.add_argument("--n-cells", type=int, default=1000)
    p.add_argument("--nlayers", type=int, default=4, help="the released model has 12")
    p.add_argument("--embsize", type=int, default=128, help="the released model has 512")
    p.add_argument("--nhead", type=int, default=4, help="the released model has 8")
    p.add_argument("--d-hid", type=int, default=128, help="the released model has 512")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=1200)
    p.add_argument("--skip-bf16", action="store_true", help="skip the bfloat16 comparison run")
    return p.parse_args()


def padded_tokens(lengths: np.ndarray, batch_size: int, *, sort: bool) -> int:
    """Tokens the transformer processes when cells are batched in input order or sorted by length."""
    lengths = np.sort(lengths) if sort else lengths
    return int(
        sum(
            lengths[i : i + batch_size].max() * lengths[i : i + batch_size].size
            for i in range(0, lengths.size, batch_size)
        )
    )


def scgpt_flops(lengths: np.ndarray, d: int, d_hid: int, n_layers: int) -> float:
    """Multiply-add FLOPs of the encoder on cells of the given lengths (no padding counted).

    ``n_layers - 1`` full layers, and the last layer as computed for the ``<cls>`` embedding: keys and values of all
    tokens, the query, attention, output projection and feed-forward of the ``<cls>`` row only.
    """
    L = lengths.astype(np.float64)
    full = 2 * L * d * 3 * d + 2 * L * d * d + 2 * 2 * L * d * d_hid + 2 * 2 * L**2 * d
    last = 2 * L * d * 2 * d + 2 * d * d + 2 * 2 * L * d + 2 * d * d + 2 * 2 * d * d_hid
    return float(full.sum() * (n_layers - 1) + last.sum())


def reference(h5ad: Path, ckpt: Path, out: Path, batch_size: int, max_length: int) -> dict | None:
    ref, py = os.environ.get("SCFMKIT_REFERENCE_SCGPT"), os.environ.get("SCFMKIT_REFERENCE_PYTHON")
    if not (ref and py):
        return None
    cmd = [py, str(HERE / "_scgpt_reference.py"), "--checkout", ref, "--h5ad", str(h5ad), "--ckpt", str(ckpt)]
    cmd += ["--out", str(out), "--batch-size", str(batch_size), "--max-length", str(max_length)]
    wall, rss, stdout = run_measured(cmd)
    return {**json.loads(stdout.strip().splitlines()[-1]), "rss_gib": rss, "wall_seconds": wall}


def bf16_run(rec, model, cells, args, common, lengths, *, fp32_seconds: float, fp32_emb: np.ndarray) -> None:
    """Ours under bf16 autocast on the same cells: speed-up, fraction of the bf16 peak, cosine per cell to fp32."""
    fast = fast_bf16()
    n = cells.n_obs if fast else min(cells.n_obs, 8)
    small = {} if fast else {"n": 512, "repeats": 3}
    peak = matmul_peak_gflops(dtype="bfloat16", **small)
    sub = cells[:n].copy()
    t = time.perf_counter()
    emb, _ = model.embed_cells(sub, batch_size=args.batch_size, max_length=args.max_length, precision="bfloat16")
    seconds = time.perf_counter() - t
    peak = max(peak, matmul_peak_gflops(dtype="bfloat16", **small))
    cos = np.sum(emb * fp32_emb[:n], axis=1)  # both are L2-normalised
    flops = scgpt_flops(lengths[:n], args.embsize, args.d_hid, args.nlayers)
    rec.record(
        "embed",
        impl="scfmkit",
        **{**common, "n_cells": n, "precision": "bfloat16"},
        seconds=round(seconds, 2),
        cells_per_s=round(n / seconds, 2),
        speedup_vs_float32=round(fp32_seconds * n / cells.n_obs / seconds, 3),  # fp32 time per cell, scaled
        fraction_of_bf16_matmul_peak=round(flops / seconds / 1e9 / peak, 3),
        matmul_peak_bf16_gflops=round(peak, 1),
        cosine_to_float32_quantiles_0_1_5_50=[round(float(q), 6) for q in np.quantile(cos, [0, 0.01, 0.05, 0.5])],
    )


def main() -> None:
    args = parse_args()
    import anndata as ad
    import torch

    import scfmkit as fm
    from scfmkit.models.scgpt import load_scgpt, write_random_checkpoint

    fm.settings.progress = False
    rec = Recorder(args.out, "scgpt")
    peak = matmul_peak_gflops()
    rec.record(
        "matmul_peak_fp32",
        gflops=round(peak, 1),
        torch_threads=torch.get_num_threads(),
        load_average=[round(v, 1) for v in os.getloadavg()],
    )
    n = 200 if args.quick else args.n_cells
    work = args.out / "scgpt_work"
    work.mkdir(parents=True, exist_ok=True)
    sizes = {"nlayers": args.nlayers, "embsize": args.embsize, "nhead": args.nhead, "d_hid": args.d_hid}
    ckpt = write_random_checkpoint(work / "ckpt", SHARED / "models" / "scgpt-human", seed=0, **sizes)
    kang = ad.read_h5ad(SHARED / "data" / "kang2018_ifnb_counts.h5ad")
    cells = kang[np.sort(np.random.default_rng(0).choice(kang.n_obs, n, replace=False))].copy()
    h5ad = work / f"kang_{n}.h5ad"
    cells.write_h5ad(h5ad)
    common = {"n_cells": n, **sizes, "batch_size": args.batch_size, "max_length": args.max_length, "precision": "fp32"}

    t0 = time.perf_counter()
    model = load_scgpt(ckpt, device="cpu")
    t1 = time.perf_counter()
    ours, params = model.embed_cells(cells, batch_size=args.batch_size, max_length=args.max_length)
    t2 = time.perf_counter()
    # measured again after the run: the fraction is against the higher of the two measurements
    peak = max(peak, matmul_peak_gflops())
    lengths = np.minimum(model.tokenize(cells, max_length=args.max_length)[0].n_genes + 1, args.max_length)
    rec.record(
        "embed",
        impl="scfmkit",
        **common,
        seconds=round(t2 - t1, 2),
        load_seconds=round(t1 - t0, 2),
        cells_per_s=round(n / (t2 - t1), 2),
        genes_matched=params["n_vars_matched"],
        padded_tokens_sorted=padded_tokens(lengths, args.batch_size, sort=True),
        padded_tokens_input_order=padded_tokens(lengths, args.batch_size, sort=False),
        real_tokens=int(lengths.sum()),
        computed="packed: real tokens only; the last layer's <cls> rows only",
        fraction_of_matmul_peak=round(
            scgpt_flops(lengths, args.embsize, args.d_hid, args.nlayers) / (t2 - t1) / 1e9 / peak, 3
        ),
        matmul_peak_gflops=round(peak, 1),
    )
    if not args.skip_bf16:
        bf16_run(rec, model, cells, args, common, lengths, fp32_seconds=t2 - t1, fp32_emb=ours)
    ref = reference(h5ad, ckpt, work / "reference_emb.npy", args.batch_size, args.max_length)
    if ref is None:
        rec.record("embed", impl="reference", skipped="set SCFMKIT_REFERENCE_SCGPT and SCFMKIT_REFERENCE_PYTHON")
        return
    theirs = np.load(work / "reference_emb.npy")
    cos = np.sum(ours * theirs, axis=1)  # both are L2-normalised
    rec.record(
        "embed",
        impl="reference",
        **common,
        seconds=round(ref["embed_seconds"], 2),
        cells_per_s=round(n / ref["embed_seconds"], 2),
        embed_data_total_seconds=round(ref["total_seconds"], 2),
        rss_gib=round(ref["rss_gib"], 2),
    )
    rec.record(
        "embed_ratio",
        **common,
        speedup=round(ref["embed_seconds"] / (t2 - t1), 2),
        cosine_ours_vs_reference_median=round(float(np.median(cos)), 4),
        cosine_ours_vs_reference_min=round(float(cos.min()), 4),
        load_average_end=[round(v, 1) for v in os.getloadavg()],
    )


if __name__ == "__main__":
    main()
