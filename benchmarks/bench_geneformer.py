"""Geneformer speed and memory: tokenizer throughput, peak RSS on a backed 200,000-cell h5ad, embedding throughput.

Ours always; the reference Geneformer too when SCFMKIT_REFERENCE_GENEFORMER (a checkout of the reference code) and
SCFMKIT_REFERENCE_PYTHON (a Python environment where it imports) are set, in the same run, so that the ratios
compare like with like. Run with ``nox -s bench`` or ``python benchmarks/bench_geneformer.py --out out/bench``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import SHARED, Recorder, matmul_peak_gflops, parse_args, run_measured
from scipy import sparse

HERE = Path(__file__).resolve().parent


def replicate(adata, n_cells: int):
    import anndata as ad

    reps = -(-n_cells // adata.n_obs)
    X = sparse.vstack([adata.X] * reps, format="csr")[:n_cells]
    out = ad.AnnData(X, var=adata.var.copy())
    out.obs_names = [f"c{i}" for i in range(n_cells)]
    return out


def reference(cmd: str, **kwargs) -> dict | None:
    ref, py = os.environ.get("SCFMKIT_REFERENCE_GENEFORMER"), os.environ.get("SCFMKIT_REFERENCE_PYTHON")
    if not (ref and py):
        return None
    args = [py, str(HERE / "_geneformer_reference.py"), cmd, "--checkout", ref]
    for k, v in kwargs.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    wall, rss, stdout = run_measured(args)
    return {**json.loads(stdout.strip().splitlines()[-1]), "rss_gib": rss}


def layer_flops(lengths: np.ndarray, h: int, inter: int, n_layers: int) -> float:
    """Multiply-add FLOPs of ``n_layers`` BERT layers on cells of the given lengths (no padding counted)."""
    L = lengths.astype(np.float64)
    per_layer = 2 * L * h * 3 * h + 2 * L * h * h + 2 * 2 * L * h * inter + 2 * 2 * L**2 * h
    return float(per_layer.sum() * n_layers)


def main() -> None:
    args = parse_args(__doc__)
    import anndata as ad

    import scfmkit as fm

    fm.settings.progress = False
    rec = Recorder(args.out, "geneformer")
    peak = matmul_peak_gflops()
    rec.record("matmul_peak_fp32", gflops=round(peak, 1))
    cells = ad.read_h5ad(SHARED / "data" / "celltypist_sample_counts_559cells.h5ad")
    dicts = SHARED / "models" / "geneformer-v1"
    model = fm.models.load(dicts, weights="random")
    work = args.out / "geneformer_work"
    work.mkdir(parents=True, exist_ok=True)

    # 1. tokenizer throughput on the real cells replicated to 50,000: from the h5ad file (read included, as the
    #    reference's timing includes its read) and in memory
    n_tok = 5_000 if args.quick else 50_000
    big = replicate(cells, n_tok)
    big_path = work / f"tokenize_{n_tok}.h5ad"
    if not big_path.exists():
        big.write_h5ad(big_path)
    # compile the tokeniser's kernels first (numba caches them on disk, so only a fresh install pays this once)
    fm.pp.tokenize(cells, model)
    fm.pp.tokenize(ad.read_h5ad(SHARED / "data" / "celltypist_sample_counts_559cells.h5ad", backed="r"), model)

    def timed_tokenize(source: str, load) -> tuple[float, object]:
        """Seconds to ``load()`` the cells and tokenise them, recorded under ``source`` with the load's share."""
        t = time.perf_counter()
        data = load()
        loaded = time.perf_counter() - t
        tokens, _ = fm.pp.tokenize(data, model)
        seconds = time.perf_counter() - t
        rec.record(
            "tokenize",
            impl="scfmkit",
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
    ref = reference("tokenize", h5ad=big_path, dicts=dicts)
    if ref:
        rec.record(
            "tokenize",
            impl="reference",
            source="h5ad file",
            n_cells=n_tok,
            seconds=round(ref["seconds"], 2),
            cells_per_s=round(n_tok / ref["seconds"]),
            speedup_backed=round(ref["seconds"] / backed, 1),  # like for like: the reference reads backed too
            speedup_read_into_memory=round(ref["seconds"] / ours, 1),
            speedup_in_memory=round(ref["seconds"] / in_memory, 1),
        )
        same = ref.get("checksum") == int(tokens.input_ids.astype(np.int64).sum())
        rec.record("tokenize_identical_checksum", value=same)
    del big, tokens

    # 2. peak RSS while tokenising a backed 200,000-cell h5ad
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
        goal_gib=2.0,
    )

    # 3. embedding throughput, V1-shaped random checkpoint (6 layers, hidden 256), fp32, same cells for both
    ckpt = work / "gf_v1_full_random"
    if not (ckpt / "model.safetensors").exists():
        fm.models.geneformer.write_random_checkpoint(ckpt, dicts, seed=0)
    n_emb = 40 if args.quick else 200
    sub = cells[:n_emb].copy()
    sub_path = work / f"embed_{n_emb}.h5ad"
    sub.write_h5ad(sub_path)
    gf = fm.models.load(ckpt)
    fm.tl.embed(sub[:4].copy(), gf, batch_size=16)  # warm-up
    t = time.perf_counter()
    fm.tl.embed(sub, gf, batch_size=16)
    ours = time.perf_counter() - t
    lengths = fm.pp.tokenize(sub, gf)[0].lengths
    flops = layer_flops(lengths, 256, 512, gf.n_layers - 1)
    rec.record(
        "embed",
        impl="scfmkit",
        n_cells=n_emb,
        seconds=round(ours, 2),
        cells_per_s=round(n_emb / ours, 2),
        gflops=round(flops / ours / 1e9, 1),
        frac_of_matmul_peak=round(flops / ours / 1e9 / peak, 2),
    )
    ref = reference("embed", h5ad=sub_path, dicts=dicts, ckpt=ckpt, batch_size=16)
    if ref:
        rec.record(
            "embed",
            impl="reference",
            n_cells=n_emb,
            seconds=round(ref["seconds"], 2),
            cells_per_s=round(n_emb / ref["seconds"], 2),
            speedup=round(ref["seconds"] / ours, 2),
        )
        if "embeddings" in ref:
            diff = np.abs(np.asarray(ref["embeddings"], np.float32) - sub.obsm["X_geneformer"]).max()
            rec.record("embed_max_abs_diff_vs_reference", value=float(diff))
    print(f"results in {rec.path}", file=sys.stderr)


if __name__ == "__main__":
    main()
