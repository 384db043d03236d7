"""Geneformer speed and memory: tokenizer throughput, peak RSS on a backed 200,000-cell h5ad, embedding throughput.

Ours always; the reference Geneformer too when SCFMKIT_REFERENCE_GENEFORMER (one or more checkouts of reference code,
``label=path`` separated by ``;``, e.g. ``Looong01/Geneformer-Parallel@af504a4=/ref/new;jkobject/geneformer@95b6340=
/ref/old``) and SCFMKIT_REFERENCE_PYTHON (a Python environment where they import) are set, in the same run, so that
the ratios compare like with like; every reference row and ratio names its reference. V1 and V2 (real
vocabularies, released sizes, seeded random weights). The same script runs on a GPU (``--device cuda``, the default
when one is visible; add ``--precision bfloat16``). Run with ``nox -s bench`` or
``python benchmarks/bench_geneformer.py --out out/bench`` (``--quick`` for small sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import SHARED, Recorder, cpu_flags, default_device, fast_bf16, matmul_peak_gflops, references, run_measured
from scipy import sparse

HERE = Path(__file__).resolve().parent


def replicate(adata, n_cells: int):
    import anndata as ad

    reps = -(-n_cells // adata.n_obs)
    X = sparse.vstack([adata.X] * reps, format="csr")[:n_cells]
    out = ad.AnnData(X, var=adata.var.copy())
    out.obs_names = [f"c{i}" for i in range(n_cells)]
    return out


REFS = references("SCFMKIT_REFERENCE_GENEFORMER")


def reference(checkout: Path, cmd: str, **kwargs) -> dict | None:
    """Run one reference checkout (``None`` without SCFMKIT_REFERENCE_PYTHON or when it skips this variant)."""
    py = os.environ.get("SCFMKIT_REFERENCE_PYTHON")
    if not py:
        return None
    args = [py, str(HERE / "_geneformer_reference.py"), cmd, "--checkout", str(checkout)]
    for k, v in kwargs.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    wall, rss, stdout = run_measured(args)
    res = json.loads(stdout.strip().splitlines()[-1])
    return None if "skipped" in res else {**res, "rss_gib": rss}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for the JSON-lines results")
    p.add_argument("--quick", action="store_true", help="small sizes (5,000 cells tokenised, 16 / 2 embedded)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when visible, else cpu)")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help="main embedding runs")
    p.add_argument("--n-embed-v1", type=int, default=None, help="cells embedded with V1 (200; quick 16)")
    p.add_argument("--n-embed-v2", type=int, default=None, help="cells embedded with V2 (40; quick 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--skip-rss", action="store_true", help="skip the 200,000-cell peak-RSS run")
    p.add_argument("--skip-bf16", action="store_true", help="skip the bfloat16 comparison run")
    return p.parse_args()


def layer_flops(lengths: np.ndarray, h: int, inter: int, n_layers: int) -> float:
    """Multiply-add FLOPs of ``n_layers`` BERT layers on cells of the given lengths (no padding counted)."""
    L = lengths.astype(np.float64)
    per_layer = 2 * L * h * 3 * h + 2 * L * h * h + 2 * 2 * L * h * inter + 2 * 2 * L**2 * h
    return float(per_layer.sum() * n_layers)


VARIANTS = {"V1": "geneformer-v1", "V2": "geneformer-v2-gc95M"}


def main() -> None:
    args = parse_args()
    import anndata as ad
    import torch

    import scfmkit as fm

    fm.settings.progress = False
    device = args.device or default_device()
    rec = Recorder(args.out, "geneformer")
    rec.record(
        "setup",
        device=device,
        torch_threads=torch.get_num_threads(),
        cpu_flags=cpu_flags(),
        gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None,
        references=[label for label, _ in REFS],
        command=" ".join(sys.argv),
        load_average=os.getloadavg(),
    )
    peak = {"float32": matmul_peak_gflops(device=device)}
    fast = fast_bf16(device)  # else a small matrix, and the bf16 embedding on a few cells only (for the cosine)
    if not args.skip_bf16 or args.precision == "bfloat16":
        small = {} if fast else {"n": 512, "repeats": 3}
        peak["bfloat16"] = matmul_peak_gflops(dtype="bfloat16", device=device, **small)
    for dtype, gflops in peak.items():
        rec.record(f"matmul_peak_{dtype}", gflops=round(gflops, 1), device=device)
    cells = ad.read_h5ad(SHARED / "data" / "celltypist_sample_counts_559cells.h5ad")
    work = args.out / "geneformer_work"
    work.mkdir(parents=True, exist_ok=True)

    # 1. tokenizer throughput on the real cells replicated to 50,000: from the h5ad file (read included, as the
    #    reference's timing includes its read) and in memory, both variants, against every reference
    n_tok = 5_000 if args.quick else 50_000
    big = replicate(cells, n_tok)
    big_path = work / f"tokenize_{n_tok}.h5ad"
    if not big_path.exists():
        big.write_h5ad(big_path)
    for variant, folder in VARIANTS.items():
        dicts = SHARED / "models" / folder
        model = fm.models.load(dicts, weights="random")
        # compile the tokeniser's kernels first (numba caches them on disk, so only a fresh install pays this once)
        fm.pp.tokenize(cells, model)
        fm.pp.tokenize(ad.read_h5ad(SHARED / "data" / "celltypist_sample_counts_559cells.h5ad", backed="r"), model)

        def timed_tokenize(source: str, load, model=model, variant=variant) -> tuple[float, object]:
            """Seconds to ``load()`` the cells and tokenise them, recorded under ``source`` with the load's share."""
            t = time.perf_counter()
            data = load()
            loaded = time.perf_counter() - t
            tokens, _ = fm.pp.tokenize(data, model)
            seconds = time.perf_counter() - t
            rec.record(
                "tokenize",
                impl="scfmkit",
                variant=variant,
                source=source,
                n_cells=n_tok,
                seconds=round(seconds, 2),
                of_which_load=round(loaded, 2),
                cells_per_s=round(n_tok / seconds),
            )
            return seconds, tokens

        ours, tokens = timed_tokenize("h5ad file, read into memory", lambda: ad.read_h5ad(big_path))
        backed, _ = timed_tokenize("h5ad file, backed", lambda: ad.read_h5ad(big_path, backed="r"))
        in_memory, _ = timed_tokenize("in memory", lambda data=big: data)
        for label, checkout in REFS:
            ref = reference(checkout, "tokenize", h5ad=big_path, dicts=dicts)
            if ref is None:
                continue
            rec.record(
                "tokenize",
                impl="reference",
                reference=label,
                variant=variant,
                source="h5ad file",
                n_cells=n_tok,
                seconds=round(ref["seconds"], 2),
                cells_per_s=round(n_tok / ref["seconds"]),
                speedup_backed=round(ref["seconds"] / backed, 1),  # like for like: the reference reads backed too
                speedup_read_into_memory=round(ref["seconds"] / ours, 1),
                speedup_in_memory=round(ref["seconds"] / in_memory, 1),
                tokens_identical_checksum=ref.get("checksum") == int(tokens.input_ids.astype(np.int64).sum()),
            )
        del tokens
    del big

    # 2. peak RSS while tokenising a backed 200,000-cell h5ad
    dicts = SHARED / "models" / VARIANTS["V1"]
    if not args.skip_rss:
        n_rss = 20_000 if args.quick else 200_000
        rss_path = work / f"backed_{n_rss}.h5ad"
        if not rss_path.exists():
            replicate(cells, n_rss).write_h5ad(rss_path)
        code = (
            "import sys, anndata as ad, scfmkit as fm; fm.settings.progress = False\n"
            "a = ad.read_h5ad(sys.argv[1], backed='r'); m = fm.models.load(sys.argv[2], weights='random')\n"
            "tok, cov = fm.pp.tokenize(a, m); print(len(tok), tok.input_ids.nbytes)\n"
        )
        wall, rss, out = run_measured([sys.executable, "-c", code, str(rss_path), str(dicts)])
        n_out, nbytes = (int(v) for v in out.split())
        rec.record(
            "tokenize_backed_peak_rss",
            n_cells=n_out,
            seconds=round(wall, 1),
            peak_rss_gib=round(rss, 2),
            tokens_gib=round(nbytes / 2**30, 2),
            goal_gib=1.0,
        )

    # 3. embedding throughput at the released sizes (random weights), same cells for ours and the references;
    #    FLOPs from the actual token lengths (no padding counted), against the highest matmul peak measured so far
    n_embed = {
        "V1": args.n_embed_v1 or (16 if args.quick else 200),
        "V2": args.n_embed_v2 or (2 if args.quick else 40),
    }
    for variant, folder in VARIANTS.items():
        dicts = SHARED / "models" / folder
        ckpt = work / f"gf_{variant}_full_random"
        if not (ckpt / "model.safetensors").exists():
            fm.models.geneformer.write_random_checkpoint(ckpt, dicts, seed=0)
        n_emb = n_embed[variant]
        sub = cells[:n_emb].copy()
        sub_path = work / f"embed_{variant}_{n_emb}.h5ad"
        sub.write_h5ad(sub_path)
        gf = fm.models.load(ckpt)
        cfg = gf.config
        lengths = fm.pp.tokenize(sub, gf)[0].lengths
        flops = layer_flops(lengths, cfg.hidden_size, cfg.intermediate_size, gf.n_layers - 1)
        common = {
            "variant": variant,
            "n_cells": n_emb,
            "layers_run": gf.n_layers - 1,
            "hidden": cfg.hidden_size,
            "mean_tokens": round(float(lengths.mean())),
            "max_tokens": int(lengths.max()),
            "batch_size": args.batch_size,
            "device": device,
        }

        def embed(precision: str, n: int, sub=sub, gf=gf) -> tuple[float, np.ndarray]:
            opts = {"batch_size": args.batch_size, "device": device, "precision": precision}
            gf.embed_cells(sub[:2].copy(), **opts)  # warm-up
            # the fp32 peak measured again right before and after the timed run: the fraction is taken against the
            # highest of all measurements in the run, so a slow first measurement cannot flatter it
            check_peak = precision == "float32"
            if check_peak:
                peak["float32"] = max(peak["float32"], matmul_peak_gflops(device=device))
            t = time.perf_counter()
            emb, _ = gf.embed_cells(sub[:n].copy(), **opts)
            seconds = time.perf_counter() - t
            if check_peak:
                peak["float32"] = max(peak["float32"], matmul_peak_gflops(device=device))
            return seconds, emb

        runs = {args.precision: (n_emb, *embed(args.precision, n_emb))}
        if not args.skip_bf16 and args.precision != "bfloat16":
            n_bf16 = n_emb if fast else min(n_emb, 2)
            runs["bfloat16"] = (n_bf16, *embed("bfloat16", n_bf16))
        for precision, (n_run, seconds, emb) in runs.items():
            f = (
                flops
                if n_run == n_emb
                else layer_flops(lengths[:n_run], cfg.hidden_size, cfg.intermediate_size, gf.n_layers - 1)
            )
            row = {
                "precision": precision,
                "n_cells_run": n_run,
                "seconds": round(seconds, 2),
                "cells_per_s": round(n_run / seconds, 2),
                "gflops": round(f / seconds / 1e9, 1),
                "frac_of_matmul_peak": round(f / seconds / 1e9 / peak[precision], 2),
                "peak_dtype": precision,
                "peak_gflops": round(peak[precision], 1),
            }
            if precision != args.precision:
                _, base_s, base = runs[args.precision]
                base = base[:n_run]
                cos = np.sum(emb * base, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(base, axis=1))
                row |= {
                    "speedup_vs_" + args.precision: round((n_run / seconds) / (n_emb / base_s), 3),
                    "cosine_to_" + args.precision + "_quantiles_0_1_5_50": [
                        round(float(q), 6) for q in np.quantile(cos, [0, 0.01, 0.05, 0.5])
                    ],
                }
            rec.record("embed", impl="scfmkit", **common, **row)
        _, ours_s, ours = runs[args.precision]
        for label, checkout in REFS:
            ref = reference(checkout, "embed", h5ad=sub_path, dicts=dicts, ckpt=ckpt, batch_size=args.batch_size)
            if ref is None:
                continue
            diff = np.abs(np.asarray(ref["embeddings"], np.float32) - ours).max()
            rec.record(
                "embed",
                impl="reference",
                reference=label,
                **common,
                precision="float32",
                seconds=round(ref["seconds"], 2),
                cells_per_s=round(n_emb / ref["seconds"], 2),
                speedup=round(ref["seconds"] / ours_s, 2),
                max_abs_diff_vs_ours=float(diff),
            )
    rec.record("done", load_average=os.getloadavg())
    print(f"results in {rec.path}", file=sys.stderr)


if __name__ == "__main__":
    main()
