"""How close to the fp32 matmul peak can an exact Geneformer V1 forward get on this CPU? A ceiling from its parts.

    python benchmarks/profile_attention_bound.py --work out/bench/geneformer_work

One thread (each cell runs on one thread in the CPU embedding path). Exact attention on ``L`` tokens costs two
matmuls per head (scores ``Q K^T`` and output ``P V``, ``4 L^2 d`` FLOPs) plus one exp, max and sum per score. The
script measures, each as a fraction of a 2048^3 ``torch.mm`` on one thread measured right before:

- torch's CPU flash kernel (``scaled_dot_product_attention``), the package's attention;
- the two matmuls alone on query blocks (``torch.mm`` per head, the best block size), i.e. attention if the softmax
  were free;
- the softmax per score: torch's ``softmax`` and ``exp``, and a hand-vectorised AVX-512 exp pass
  (``benchmarks/kernels/softmax_avx512.c``, compiled here with gcc when gcc and AVX-512 are there);
- attention assembled from those parts (block matmuls, the AVX-512 pass in between): what the parts give in practice;
  and the same blocks from torch ops only (``mm``, ``exp``, ``sum``, ``mm``; no max pass, as random scores cannot
  overflow the exp);
- the ceiling: the best matmuls plus the cheapest exp pass, timed apart and added (no real kernel reaches it);
- V1's four linear layers at the cells' mean length.

Then, on the token lengths of the cells in ``<work>/embed_V1_<n>.h5ad`` (``bench_geneformer.py`` writes them), the
whole V1 forward's fraction with the flash kernel and at the ceiling, from the FLOP shares of attention and linears,
and the package's V1 embedding of those cells on this one thread, measured.
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from _common import best_seconds, cpu_flags, matmul_peak_gflops
from bench_geneformer import layer_flops

HERE = Path(__file__).resolve().parent
H, D, HIDDEN, INTER = 4, 64, 256, 512  # Geneformer V1


def compile_kernel(tmp: Path):
    """The AVX-512 softmax pass as a ctypes function, or ``None`` (with the reason printed)."""
    if "avx512f" not in cpu_flags() or shutil.which("gcc") is None:
        print("AVX-512 exp pass: skipped (needs avx512f and gcc)")
        return None
    lib = tmp / "softmax_avx512.so"
    src = HERE / "kernels" / "softmax_avx512.c"
    subprocess.run(["gcc", "-O3", "-march=native", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    fn = ctypes.CDLL(str(lib)).softmax_unnorm
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    fn.restype = None
    return fn


def blocked(qh, kt, vh, r: int, softmax) -> object:
    """Attention of one sequence from query blocks of ``r`` rows per head.

    Per block: ``mm``, ``softmax(scores)`` (in place, returning the row sums, or ``None`` for the matmuls alone),
    ``mm``, divide. ``qh`` scaled queries and ``vh`` values ``(heads, n, d)``, ``kt`` keys ``(heads, d, n)``.
    """
    import torch

    h, n, d = qh.shape
    s, res = torch.empty(r, n), torch.empty(h, n, d)
    for i in range(h):
        for lo in range(0, n, r):
            m = min(r, n - lo)
            torch.mm(qh[i, lo : lo + m], kt[i], out=s[:m])
            lsum = softmax(s[:m])
            o = torch.mm(s[:m], vh[i], out=res[i, lo : lo + m])
            if lsum is not None:
                o.div_(lsum)
    return res


def time_length(n: int, kernel, pk: float) -> float:
    """Print the figures at ``n`` tokens; return the ceiling."""
    import torch
    import torch.nn.functional as F

    qkv = torch.randn(n, 3, H, D)
    q, k, v = (qkv[:, i].transpose(0, 1)[None] for i in range(3))
    flops = 4 * n * n * H * D
    ref = F.scaled_dot_product_attention(q, k, v)[0]
    flash = flops / best_seconds(lambda: F.scaled_dot_product_attention(q, k, v)) / 1e9 / pk
    qh = (q[0] * D**-0.5).contiguous()
    kt, vh = k[0].transpose(1, 2).contiguous(), v[0].contiguous()

    def no_softmax(s):
        return None

    best_mm, best_r = min((best_seconds(lambda r=r: blocked(qh, kt, vh, r, no_softmax)), r) for r in (64, 128, 256))
    scores, out = torch.randn(256, n), torch.empty(256, n)
    per = scores.numel()
    t_softmax = best_seconds(lambda: torch.softmax(scores, -1)) / per
    t_exp = best_seconds(lambda: torch.exp(scores, out=out)) / per

    def torch_softmax(s):  # no max pass: the exp of these scores cannot overflow
        return torch.exp(s, out=s).sum(-1, keepdim=True)

    torch_only = blocked(qh, kt, vh, best_r, torch_softmax)
    torch.testing.assert_close(torch_only, ref, rtol=1e-4, atol=1e-5)
    t_torch = best_seconds(lambda: blocked(qh, kt, vh, best_r, torch_softmax))
    row = [
        f"flash kernel {flash:.2f}",
        f"two matmuls alone {flops / best_mm / 1e9 / pk:.2f} (blocks of {best_r})",
        f"per score: matmuls {best_mm / (n * n * H) * 1e9:.3f} ns, torch softmax {t_softmax * 1e9:.3f} ns, "
        f"torch exp {t_exp * 1e9:.3f} ns",
        f"torch ops only (mm, exp, sum, mm) {flops / t_torch / 1e9 / pk:.2f}",
    ]
    t_pass = t_exp
    if kernel is not None:
        lsum = torch.empty(256)
        t_copy = best_seconds(lambda: out.copy_(scores)) / per

        def avx() -> None:
            out.copy_(scores)
            kernel(out.data_ptr(), out.shape[0], n, n, lsum.data_ptr())

        t_pass = max(best_seconds(avx) / per - t_copy, 0.0)
        avx()
        err = (out / lsum[:, None] - torch.softmax(scores, -1)).abs().max().item()

        def avx_softmax(s):
            sums = torch.empty(s.shape[0], 1)
            kernel(s.data_ptr(), s.shape[0], n, n, sums.data_ptr())
            return sums

        torch.testing.assert_close(blocked(qh, kt, vh, best_r, avx_softmax), ref, rtol=1e-4, atol=1e-5)
        t_asm = best_seconds(lambda: blocked(qh, kt, vh, best_r, avx_softmax))
        row += [
            f"AVX-512 exp pass {t_pass * 1e9:.3f} ns (softmax error {err:.1e})",
            f"assembled {flops / t_asm / 1e9 / pk:.2f}",
        ]
    ceiling = flops / (best_mm + t_pass * n * n * H) / 1e9 / pk
    row.append(f"ceiling {ceiling:.2f}")
    print(f"{n} tokens, one-thread matmul {pk:.0f} GFLOP/s: " + "; ".join(row))
    return ceiling


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=None, help="bench_geneformer.py's <out>/geneformer_work")
    p.add_argument("--n-cells", type=int, default=16, help="the cells of embed_V1_<n>.h5ad")
    p.add_argument("--lengths", type=int, nargs="+", default=[600, 1092, 2048], help="attention lengths to time")
    args = p.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    peak = matmul_peak_gflops  # a 2048^3 torch.mm on torch's threads: one here

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        kernel = compile_kernel(Path(tmp))
        ceiling = {n: time_length(n, kernel, peak()) for n in args.lengths}

        if args.work is None:
            return
        import anndata as ad

        import scfmkit as fm

        gf = fm.models.load(args.work / "gf_V1_full_random")
        cells = ad.read_h5ad(args.work / f"embed_V1_{args.n_cells}.h5ad")
        lengths = fm.pp.tokenize(cells, gf)[0].lengths.astype(np.float64)
        pk = peak()
        n = int(round(lengths.mean()))
        shapes = [(HIDDEN, 3 * HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, INTER), (INTER, HIDDEN)]
        lin_flops, lin_sec = 0.0, 0.0
        for fan_in, fan_out in shapes:
            w, bias, xi = torch.randn(fan_out, fan_in), torch.randn(fan_out), torch.randn(n, fan_in)
            lin_sec += best_seconds(lambda w=w, bias=bias, xi=xi: F.linear(xi, w, bias))
            lin_flops += 2 * n * fan_in * fan_out
        lin = lin_flops / lin_sec / 1e9 / pk
        flops = layer_flops(lengths, HIDDEN, INTER, 1)  # per layer
        share = float((4 * lengths**2 * HIDDEN).sum()) / flops  # attention's two products
        qkv = torch.randn(n, 3, H, D)
        q, k, v = (qkv[:, i].transpose(0, 1)[None] for i in range(3))
        flash = 4 * n * n * H * D / best_seconds(lambda: F.scaled_dot_product_attention(q, k, v)) / 1e9 / pk
        # the ceiling at the mean length, interpolated from the timed lengths
        ns = sorted(ceiling)
        cap = float(np.interp(n, ns, [ceiling[m] for m in ns]))

        def whole(att: float) -> float:
            return 1 / ((1 - share) / lin + share / att)

        print(
            f"V1 on {len(lengths)} cells (mean {n} tokens): attention {share:.2f} of the FLOPs; linear layers at "
            f"{lin:.2f}; whole forward with the flash kernel ({flash:.2f}) at most {whole(flash):.2f}, with attention "
            f"at the ceiling ({cap:.2f}) at most {whole(cap):.2f} (layer norms, adds and threads not counted)"
        )
        opts = {"batch_size": 16, "device": "cpu", "precision": "float32"}
        sec = best_seconds(lambda: gf.embed_cells(cells.copy(), **opts), 3)
        frac = flops * (gf.n_layers - 1) / sec / 1e9 / max(pk, peak())
        print(f"V1 embedding of those cells on this one thread: {frac:.2f} of the peak")


if __name__ == "__main__":
    main()
