"""Sessions: tests, tests_latest, tests_min, demo, bench, lint, docs.

Every session installs torch==2.13.0 first, pinned by constraints.txt.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", str(ROOT / "constraints.txt"))
SHARED = Path(os.environ.get("SCFMKIT_SHARED_DIR", ROOT.parent / "shared")).resolve()


def _interpreter(version: str) -> str:
    """``version`` when ``python<version>`` runs; else the newest pyenv copy of it (a pyenv shim fails for versions
    that are not pyenv-global, and nox would take the failing shim)."""
    try:
        subprocess.run([f"python{version}", "-c", ""], check=True, capture_output=True)
        return version
    except (OSError, subprocess.CalledProcessError):
        pass
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))

    def key(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parents[1].name))

    found = sorted(root.glob(f"versions/{version}.*/bin/python{version}"), key=key)
    return str(found[-1]) if found else version


def _install(session: nox.Session, extras: str, *, upgrade: bool = False) -> None:
    # torch first, from the CPU wheel this machine offers; the constraints file keeps every later install on it
    session.install("torch==2.13.0")
    eager = ("--upgrade", "--upgrade-strategy", "eager") if upgrade else ()  # a reused venv gets the newest too
    session.install(*eager, *CONSTRAINTS, "-e", f".[{extras}]")


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


PY_LATEST = "3.12"
PY_MIN = "3.11"


@nox.session(python=_interpreter(PY_LATEST))
def tests_latest(session: nox.Session) -> None:
    """The test suite on Python 3.12 with the newest release of every dependency (torch stays 2.13.0).

    The local CPU torch wheel is cp311 only, so this installs PyPI's torch 2.13.0 for cp312 with its CUDA packages.
    Measured on a 2-core developer machine with an empty pip cache (``pip install torch==2.13.0`` then
    ``pip install -c constraints.txt -e '.[test]'`` in a fresh Python 3.12 venv): torch + CUDA packages 150 s and
    1,355 MB downloaded (torch wheel 527 MB), the rest 188 s and 310 MB; the venv takes 6.1 GB on disk (nvidia/
    2.7 GB, torch/ 1.1 GB, triton/ 0.7 GB). Install ~6 minutes; the suite itself takes about as long as ``tests``.

    .ci/run calls it after the README test command. Measured 2026-12-01 on a fresh clone (pip cache warm from an
    earlier install): 630 passed, 1 skipped (mudata 0.4.1 cannot read the old .h5mu itself; the fallback reader is
    tested), tests 1,148 s, session 22 min, with anndata 0.13.4, scanpy 1.12.4, scvi-tools 1.5.1, scib-metrics
    0.6.1, mudata 0.4.1, muon 0.2.0, pandas 3.1.1.
    """
    _install(session, "test", upgrade=True)
    session.run("python", "-c", "import sys; assert sys.version_info[:2] == (3, 12), sys.version")
    session.run("pytest", "-n", "2", "--durations=15", *session.posargs, env=_env())


def _lower_bounds(extras: tuple[str, ...]) -> list[str]:
    """``name==X`` for every ``name>=X`` among the dependencies of pyproject.toml and of ``extras`` (not torch)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in project["optional-dependencies"][extra]:
            req = Requirement(line)
            if req.name == project["name"]:
                todo.extend(req.extras)
            else:
                reqs.append(line)
    pins = {}
    for line in reqs:
        req = Requirement(line)
        lows = [spec.version for spec in req.specifier if spec.operator == ">="]
        if lows and req.name != "torch":
            pins[req.name] = f"{req.name}=={lows[0]}"
    return sorted(pins.values())


@nox.session(python=_interpreter(PY_MIN))
def tests_min(session: nox.Session) -> None:
    """The test suite on Python 3.11 with every dependency at the lower bound that pyproject.toml states.

    The constraints file is generated from pyproject.toml (``name==X`` for each ``name>=X`` of the dependencies and
    of the ``test`` extra), so a lower bound is always the version tested. torch is the exception: it stays at
    2.13.0 (constraints.txt), the CPU wheel every environment uses; dependencies without a lower bound take their
    newest release that fits. pip's resolver needs long for this set: the first install took 878 s on a loaded
    2-core machine, so CI does not run this session.
    """
    pins = _lower_bounds(("test",))
    path = Path(session.create_tmp()) / "constraints-min.txt"
    path.write_text("\n".join(["torch==2.13.0", *pins]) + "\n")
    session.log("lower bounds: " + ", ".join(pins))
    session.install("torch==2.13.0")
    session.install("-c", str(path), "-e", ".[test]")
    session.run("python", "-c", "import sys; assert sys.version_info[:2] == (3, 11), sys.version")
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
