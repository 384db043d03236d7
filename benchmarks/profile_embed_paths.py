"""The packed BERT forward's two CPU paths side by side: layer by layer over the batch vs one cell per torch thread.

Run after ``bench_geneformer.py`` (it writes the random-weight released-size checkpoints and the real cells it embeds
under ``<out>/geneformer_work``)::

    python benchmarks/profile_embed_paths.py --work out/bench/geneformer_work --rounds 3

Both paths in one process, alternating, the fp32 matmul peak measured before and after every round; prints each
path's times and its fraction of the highest peak measured (FLOPs from the real token lengths, as in
``bench_geneformer.py``). Random weights: speed only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import matmul_peak_gflops
from bench_geneformer import layer_flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="bench_geneformer.py's <out>/geneformer_work")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cells", default="V1=16,V2=4", help="variant=n_cells of the embed_<variant>_<n>.h5ad files")
    args = p.parse_args()

    import anndata as ad

    import scfmkit as fm
    from scfmkit.models import _bert

    fm.settings.progress = False
    packed = _bert.BertEncoder.forward_packed
    peaks = [matmul_peak_gflops()]
    for item in args.cells.split(","):
        variant, n = item.split("=")
        sub = ad.read_h5ad(args.work / f"embed_{variant}_{n}.h5ad")
        gf = fm.models.load(args.work / f"gf_{variant}_full_random")
        cfg = gf.config
        flops = layer_flops(fm.pp.tokenize(sub, gf)[0].lengths, cfg.hidden_size, cfg.intermediate_size, gf.n_layers - 1)
        gf.embed_cells(sub[:2].copy(), batch_size=16)  # warm-up
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for per_sequence in (False, True):
                _bert.BertEncoder.forward_packed = lambda self, *a, ps=per_sequence, **k: packed(
                    self, *a, per_sequence=ps, **k
                )
                t = time.perf_counter()
                gf.embed_cells(sub, batch_size=16)
                times[per_sequence].append(time.perf_counter() - t)
            peaks.append(matmul_peak_gflops())
        _bert.BertEncoder.forward_packed = packed
        peak = max(peaks)
        for per_sequence, ts in times.items():
            best, median = min(ts), sorted(ts)[len(ts) // 2]
            name = "one cell per thread" if per_sequence else "layer by layer"
            print(
                f"{variant} {n} cells, {name}: {[round(t, 2) for t in ts]} s; fraction of the peak: best "
                f"{flops / best / 1e9 / peak:.3f}, median {flops / median / 1e9 / peak:.3f}"
            )
    print(f"fp32 matmul peaks measured (GFLOP/s): {[round(p) for p in peaks]}; highest {max(peaks):.1f}")


if __name__ == "__main__":
    main()
