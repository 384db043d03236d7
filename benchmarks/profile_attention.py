"""Exact attention on CPU, three ways, against the fp32 matmul rate (Geneformer V1's shape: 4 heads of 64).

    python benchmarks/profile_attention.py --threads 1 2

For each thread count and length: torch's CPU flash kernel (``scaled_dot_product_attention`` on the strided
``(tokens, 3, heads, 64)`` layout the model uses), the same kernel called on query blocks (which picks its smaller
block sizes), and attention from batched matmuls and softmax (``baddbmm``/``softmax``/``bmm``, in query blocks or
whole). Each as a fraction of a 2048^3 ``torch.mm`` with the same threads, measured right before.
"""

from __future__ import annotations

import argparse

from _common import best_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--lengths", type=int, nargs="+", default=[448, 600, 802, 1031, 1466, 2048])
    p.add_argument("--heads", type=int, default=4)
    args = p.parse_args()

    import torch
    import torch.nn.functional as F

    h, d = args.heads, 64

    def chunked_kernel(q, k, v, c):
        return torch.cat([F.scaled_dot_product_attention(q[:, :, s : s + c], k, v) for s in range(0, q.shape[2], c)], 2)

    def matmuls(q, k, v, c):
        q, k, v = q[0], k[0], v[0]
        n = q.shape[1]
        out = []
        for s in range(0, n, c):
            qs = q[:, s : s + c]
            scores = torch.baddbmm(torch.empty(h, qs.shape[1], n), qs, k.transpose(1, 2), beta=0, alpha=d**-0.5)
            out.append(torch.bmm(torch.softmax(scores, -1), v))
        return torch.cat(out, 1)[None]

    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
            for n in args.lengths:
                peak = 2 * 2048**3 / best_seconds(lambda a=a, b=b: a @ b) / 1e9
                qkv = torch.randn(n, 3, h, d)
                q, k, v = (qkv[:, i].transpose(0, 1)[None] for i in range(3))
                flops = 4 * n * n * h * d / 1e9
                ref = F.scaled_dot_product_attention(q, k, v)
                sec = best_seconds(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))
                row = [f"kernel {flops / sec / peak:.2f}"]
                for name, f in (("kernel on query blocks", chunked_kernel), ("matmuls+softmax", matmuls)):
                    parts = []
                    for c in (64, 128, 256, n):
                        torch.testing.assert_close(f(q, k, v, c), ref, rtol=1e-5, atol=1e-5)
                        sec = best_seconds(lambda q=q, k=k, v=v, c=c, f=f: f(q, k, v, c))
                        parts.append(f"{'all' if c == n else c}: {flops / sec / peak:.2f}")
                    row.append(f"{name} ({', '.join(parts)})")
                print(f"{threads} thread(s), {n} tokens, matmul {peak:.0f} GFLOP/s; fraction: " + "; ".join(row))


if __name__ == "__main__":
    main()
