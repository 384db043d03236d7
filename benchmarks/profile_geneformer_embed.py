"""Where a Geneformer embedding's time goes: ``torch.profiler`` self CPU time by kernel, and the attention kernel alone.

Run after ``bench_geneformer.py`` (it writes the random-weight released-size checkpoints and the real cells it embeds
under ``<out>/geneformer_work``)::

    python benchmarks/profile_geneformer_embed.py --work out/bench/geneformer_work --variant V1 --n-cells 16

Prints the embedding time (best of 3, all threads), the profiler table of one more call (one thread), the fp32
matmul rate of a 2048^3 ``torch.mm`` and of ``scaled_dot_product_attention`` alone at (1, heads, tokens, 64) for a
few lengths (inference, CPU flash kernel), each in GFLOP/s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import best_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="bench_geneformer.py's <out>/geneformer_work")
    p.add_argument("--variant", choices=["V1", "V2"], default="V1")
    p.add_argument("--n-cells", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    import anndata as ad
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    import scfmkit as fm

    sub = ad.read_h5ad(args.work / f"embed_{args.variant}_{args.n_cells}.h5ad")
    gf = fm.models.load(args.work / f"gf_{args.variant}_full_random")
    opts = {"batch_size": args.batch_size, "device": "cpu", "precision": "float32"}
    print(
        f"embed {args.n_cells} cells: {best_seconds(lambda: gf.embed_cells(sub.copy(), **opts), 3):.3f} s (best of 3)"
    )
    # on CPU the embedding runs one cell per torch thread, in worker threads the profiler does not record: the
    # table is of a one-thread run (the same ops, one cell after another in this thread)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            gf.embed_cells(sub.copy(), **opts)
    finally:
        torch.set_num_threads(threads)
    print("profiler table of a one-thread run:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.set_num_threads(1)
    one = 2 * 2048**3 / best_seconds(lambda: a @ b) / 1e9
    torch.set_num_threads(threads)
    print(f"matmul 2048^3, one thread: {one:.1f} GFLOP/s (the rate of the profiled run's threads)")
    print(f"matmul 2048^3: {2 * 2048**3 / best_seconds(lambda: a @ b) / 1e9:.1f} GFLOP/s")
    heads = gf.config.num_attention_heads
    d = gf.config.hidden_size // heads
    with torch.inference_mode():
        for n in (600, 1092, 2048):
            q, k, v = (torch.randn(1, heads, n, d) for _ in range(3))
            sec = best_seconds(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))
            print(f"attention alone, {n} tokens: {4 * n * n * heads * d / sec / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
