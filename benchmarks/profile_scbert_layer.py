"""One scBERT Performer layer at the released shapes on one cell: seconds per block size, and a torch.profiler table.

A seeded random layer (200 dims, 10 heads of 64, 266 random features, 4x feed-forward) on 16,907 random expression
tokens; the fused inference path (``_performer._fused_layer``) is timed with blocks of ``--chunks`` positions, and
the last block size is profiled. Threads: ``--threads`` (default: torch's, which follows ``taskset``).

Run: ``python benchmarks/profile_scbert_layer.py [--threads 1] [--chunks 512 1024 2048 4096] [--profile]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int)
    p.add_argument("--chunks", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table for the first block size")
    args = p.parse_args()
    import torch

    import scfmkit.models._performer as perf

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = perf.ScBertLM(perf.PerformerConfig(depth=1)).eval()
    for mod in model.modules():
        if isinstance(mod, perf.FastAttention):
            mod.projection_matrix.copy_(perf.gaussian_orthogonal_random_matrix(*mod.projection_matrix.shape))
    ids = torch.randint(0, 7, (1, 16_907))
    (attn, ff) = model.performer.net.layers[0]
    with torch.inference_mode():
        x = model.embed(ids).contiguous()
        perf._fused_layer(x.clone(), attn, ff)  # warm-up
        for chunk in args.chunks:
            y = x.clone()
            t = time.perf_counter()
            perf._fused_layer(y, attn, ff, chunk=chunk)
            print(f"threads {torch.get_num_threads()} block {chunk}: {time.perf_counter() - t:.3f} s per layer")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                perf._fused_layer(x.clone(), attn, ff, chunk=args.chunks[0])
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
