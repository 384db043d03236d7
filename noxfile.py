"""Sessions: tests, demo, bench, lint, docs. Every session installs torch==2.13.0 first, pinned by constraints.txt."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", str(ROOT / "constraints.txt"))
SHARED = Path(os.environ.get("SCFMKIT_SHARED_DIR", ROOT.parent / "shared")).resolve()


def _install(session: nox.Session, extras: str) -> None:
    # torch first, from the CPU wheel this machine offers; the constraints file keeps every later install on it
    session.install("torch==2.13.0")
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")


def _env() -> dict[str, str]:
    env = {"SCFMKIT_SHARED_DIR": str(SHARED), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    if (SHARED / "data").is_dir():
        env.setdefault("SCFMKIT_DATA_DIR", str(SHARED / "data"))
    if (SHARED / "models").is_dir():
        env.setdefault("SCFMKIT_MODELS_DIR", str(SHARED / "models"))
    return env


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (real data from ../shared; tiny random-weight checkpoints built at test time)."""
    _install(session, "test")
    session.run("pytest", "-n", "2", "--durations=15", *session.posargs, env=_env())


@nox.session
def demo(session: nox.Session) -> None:
    """The main job on real data: embeddings + baselines + the perturbation baseline table, with a report."""
    _install(session, "full")
    out = ROOT / "out" / "demo"
    session.run("python", "-m", "scfmkit._demo", "--out", str(out), *session.posargs, env=_env())


@nox.session
def bench(session: nox.Session) -> None:
    """Speed and memory benchmarks; prints JSON lines and writes out/bench/*.jsonl."""
    _install(session, "full")
    out = ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    scripts = session.posargs or sorted(str(p) for p in (ROOT / "benchmarks").glob("bench_*.py"))
    for script in scripts:
        session.run("python", script, "--out", str(out), env=_env())


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors."""
    _install(session, "full,docs")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", env=_env())
