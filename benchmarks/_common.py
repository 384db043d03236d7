"""Helpers shared by the benchmark scripts (timing, peak memory, matmul peak, JSON lines)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("SCFMKIT_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for the JSON-lines results")
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    return p.parse_args()


class Recorder:
    """Print one JSON object per measurement and append it to ``out/<name>.jsonl``."""

    def __init__(self, out: Path, name: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / f"{name}.jsonl"
        self.path.write_text("")
        self.record(
            "machine",
            cpu=platform.processor() or platform.machine(),
            n_cpu=os.cpu_count(),
            python=sys.version.split()[0],
        )

    def record(self, what: str, **values) -> dict:
        row = {"what": what, **values}
        line = json.dumps(row, default=float)
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
        return row


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``: the same scripts run unchanged on either."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def best_seconds(f, n: int = 5) -> float:
    """The fastest of ``n`` timed calls of ``f``, after one untimed warm-up call."""
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, dtype: str = "float32", device: str = "cpu") -> float:
    """Measured matmul throughput of this machine (torch, all threads, or one GPU), in GFLOP/s."""
    import torch

    if device.startswith("cuda"):
        n = max(n, 8192)
    a = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    b = torch.randn(n, n, device=device).to(getattr(torch, dtype))

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def cpu_flags() -> list[str]:
    """The CPU features that decide fast bf16 (``avx512_bf16``, ``amx_bf16``...), from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))


def fast_bf16(device: str = "cpu") -> bool:
    """Whether bf16 matmuls run at least as fast as fp32: a GPU, or a CPU with ``avx512_bf16``/``amx_bf16``.

    Elsewhere bf16 is far slower than fp32 (about 14x on the 2-core AVX2 machine): the scripts then measure its peak on
    a small matrix and embed a few cells only.
    """
    return device.startswith("cuda") or any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16"))


def references(env: str) -> list[tuple[str, Path]]:
    """Reference checkouts from ``env``: ``label=path`` entries separated by ``;`` (a bare path is its own label)."""
    value = os.environ.get(env, "")
    out = []
    for entry in filter(None, (e.strip() for e in value.split(";"))):
        label, _, path = entry.rpartition("=")
        out.append((label or path, Path(path)))
    return out


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in GiB of the child, stdout)."""
    code = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2\n"
        "sys.stderr.write(p.stderr)\n"
        "print(json.dumps({'wall': wall, 'rss_gib': rss, 'rc': p.returncode, 'stdout': p.stdout}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-3000:]}")
    return res["wall"], res["rss_gib"], res["stdout"]
