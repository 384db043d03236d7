"""Plumbing of the blockwise (dask) engine: row blocks of a matrix, the per-process model cache, the zarr block store.

No AnnData here and no model code: :mod:`scfmkit._blockwise` builds the tasks from these parts. dask,
distributed and zarr are imported inside the functions (``pip install 'scfmkit[dask]'``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from .models import FoundationModel

__all__ = [
    "BlockStore",
    "ModelRef",
    "as_row_blocks",
    "active_client",
    "cached_model",
    "connect",
    "fingerprint_of",
    "is_dask",
    "local_cluster",
    "run_tasks",
]

STORE_FORMAT = "scfmkit-blocks-1"


def require_dask() -> None:
    """A clear error when dask (or zarr) is missing."""
    try:
        import dask.array  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as err:  # pragma: no cover - the test environment has them
        msg = "The blockwise engine needs dask and zarr: `pip install 'scfmkit[dask]'`."
        raise ImportError(msg) from err


def is_dask(x: object) -> bool:
    """Whether ``x`` is a dask array (without importing dask when it is not loaded)."""
    import sys

    if "dask.array" not in sys.modules:
        return False
    import dask.array as da

    return isinstance(x, da.Array)


# ----------------------------------------------------------------------------------------------------- row blocks


def as_row_blocks(X: Any, block_size: int | None, *, filename: str | Path | None = None, element: str = "X"):
    """``X`` as a dask array of row blocks with all genes in one chunk; returns ``(array, block_size)``.

    ``X`` is a dask array (chunks across genes are refused; its row chunks are used unless ``block_size`` is given),
    an in-memory matrix, or anndata's backed dataset (then ``filename``/``element`` locate it, and each task reads its
    rows from the file itself). Blocks are regular: ``block_size`` rows each, the last one shorter.
    """
    require_dask()
    import dask.array as da

    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int | np.integer)):
        msg = f"`block_size` must be a positive integer (cells per task), got {block_size!r}."
        raise ValueError(msg)
    if block_size is not None and block_size < 1:
        msg = f"`block_size` must be a positive integer (cells per task), got {block_size!r}."
        raise ValueError(msg)
    if is_dask(X):
        if len(X.chunks[1]) != 1:
            msg = (
                f"The dask array has {len(X.chunks[1])} chunks across genes; every task needs all genes of its cells. "
                "Rechunk to whole rows first: `X = X.rechunk({1: -1})` (or read with "
                "`anndata.experimental.read_elem_lazy(elem, chunks=(n_cells, -1))`)."
            )
            raise ValueError(msg)
        size = int(block_size or X.chunks[0][0])
        if any(c != size for c in X.chunks[0][:-1]) or X.chunks[0][-1] > size:
            X = X.rechunk({0: size})
        return X, size
    size = int(block_size or 4096)
    if getattr(X, "format", None) in {"csr", "csc"} and hasattr(X, "group"):  # anndata's backed sparse dataset
        if filename is None:
            msg = "A backed matrix needs the file it lives in (`filename=`)."
            raise ValueError(msg)
        import h5py
        from anndata.experimental import read_elem_lazy

        f = h5py.File(filename, "r")
        return read_elem_lazy(f[element], chunks=(size, -1)), size
    if hasattr(X, "id") and hasattr(X, "file"):  # backed dense h5py dataset
        return da.from_array(X, chunks=(size, -1)), size
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
        meta = sparse.csr_matrix((0, X.shape[1]), dtype=X.dtype)
        return da.from_array(X, chunks=(size, -1), asarray=False, meta=meta), size
    return da.from_array(np.asarray(X), chunks=(size, -1)), size


def block_bounds(n_obs: int, block_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the regular blocks."""
    return [(s, min(s + block_size, n_obs)) for s in range(0, n_obs, block_size)]


# ----------------------------------------------------------------------------------------------------- scheduler


def active_client():
    """The active ``dask.distributed`` client, or ``None`` (dask's default scheduler is used then)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover
        return None
    try:
        return default_client()
    except ValueError:
        return None


def connect(scheduler: str | None = None, *, n_workers: int | None = None, timeout: float = 10.0):
    """A client: to the scheduler at ``scheduler``, or to a new local cluster of ``n_workers`` processes.

    Returns ``(client, cluster_or_None)``; an unreachable address raises :class:`ConnectionError` saying so.
    """
    require_dask()
    from distributed import Client

    if scheduler is not None:
        try:
            return Client(scheduler, timeout=timeout), None
        except (OSError, TimeoutError) as err:
            msg = (
                f"Could not reach a dask scheduler at {scheduler!r} within {timeout:g} s ({err}). Start one "
                "(`dask scheduler`, `dask worker ADDRESS`) or use `--workers N` for a local cluster."
            )
            raise ConnectionError(msg) from err
    cluster = local_cluster(n_workers or 1)
    return Client(cluster), cluster


def local_cluster(n_workers: int, *, threads_per_worker: int = 1):
    """A ``LocalCluster`` of ``n_workers`` processes set up for model inference (what ``connect`` starts).

    Two of distributed's defaults are changed for its workers only:

    - the statistical profiler is off (it samples every thread's stack many times a second);
    - ``MALLOC_TRIM_THRESHOLD_`` is not set in the workers' environment. distributed sets it to 64 KiB to hand freed
      memory back to the OS; setting it also switches off glibc's adaptive mmap threshold, so every tensor the
      forward pass allocates is a fresh mmap whose pages fault in again: measured +55% CPU time (mostly system
      time) for the same block in a worker against this process (``benchmarks/bench_dask_phases.py``). Peak RSS
      stays bounded by one block's working set. On a cluster you start yourself, drop it the same way
      (``distributed.nanny.pre-spawn-environ`` in dask's config).
    """
    import dask
    from distributed import LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.worker.profile.enabled": False, "distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, dashboard_address=None
        )


def run_tasks(tasks: Sequence[Any], *, desc: str = "blocks") -> list[Any]:
    """Compute delayed ``tasks`` on the active client (every task runs; the first error is raised at the end).

    Without a client they run on dask's default scheduler. Progress is logged per finished task.
    """
    from ._utils import logger

    if not tasks:
        return []
    client = active_client()
    if client is None:
        import dask

        return list(dask.compute(*tasks))
    from distributed import as_completed

    futures = client.compute(list(tasks))
    index = {f.key: i for i, f in enumerate(futures)}
    n = len(futures)
    results: list[Any] = [None] * n
    first_error: BaseException | None = None
    done = 0
    pending = as_completed(futures)
    del futures  # each future is released once its result is here: a worker keeps a task (its spec included,
    # e.g. the block's obs) as long as a future holds it, so holding all of them grew the workers' RSS per block
    for fut in pending:
        done += 1
        if fut.status == "error":
            first_error = first_error or fut.exception()
            logger.warning("%s: task %d failed (%s)", desc, index[fut.key], fut.exception())
        else:
            results[index[fut.key]] = fut.result()
            logger.info("%s: %d/%d done", desc, done, n)
        fut.release()
    if first_error is not None:
        raise first_error
    return results


# ----------------------------------------------------------------------------------------------------- model cache


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load a model itself (the model is never pickled into a task).

    ``weights_id`` is checked after loading: a worker that finds other weights under ``source`` refuses to run.
    """

    source: str
    name: str
    weights: str
    seed: int
    weights_id: str

    @classmethod
    def of(cls, model: FoundationModel) -> ModelRef:
        """The reference of a loaded model."""
        wid = model.weights_id
        random = wid.startswith("random:")
        seed = int(wid.split(":", 1)[1]) if random else 0
        source = str(model.source)
        if not Path(source).is_dir():
            source = model.name  # a registry name: workers resolve it through $SCFMKIT_MODELS_DIR or the hub cache
        return cls(source, model.name, "random" if random else "pretrained", seed, wid)

    @property
    def key(self) -> tuple[str, str]:
        """Cache key: the checkpoint location and the weights id."""
        return (self.source, self.weights_id)


_MODELS: dict[tuple[str, str], Any] = {}
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


def prime_model(model: FoundationModel) -> None:
    """Put an already loaded model into this process's cache (dask's threaded scheduler then reuses it)."""
    ref = ModelRef.of(model)
    with _CACHE_LOCK:
        _MODELS.setdefault(ref.key, model)
        _LOCKS.setdefault(ref.key, threading.Lock())


def task_threads() -> int | None:
    """Give torch in this (task) thread the worker's thread budget; returns the number set, or ``None``.

    dask's nanny starts workers with ``OMP_NUM_THREADS=1`` (one thread per task slot), but torch's OpenMP pool in
    the worker's task thread still opened one thread per core: a second thread spin-waiting at OpenMP barriers on
    every forward pass, measured as ~45% of the worker's CPU time on a loaded 2-core machine
    (benchmarks/bench_dask.py). Only inside a ``dask.distributed`` worker, whose budget is ``OMP_NUM_THREADS``
    (set by its nanny, or by you); elsewhere (dask's threaded scheduler in your own process) torch is left as it is.
    """
    import os
    import sys

    budget = os.environ.get("OMP_NUM_THREADS", "")
    if "distributed" not in sys.modules or not budget.isdigit() or int(budget) < 1:
        return None
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return None
    import torch  # the task is about to run a torch model

    if torch.get_num_threads() != int(budget):
        torch.set_num_threads(int(budget))
    return int(budget)


def cached_model(ref: ModelRef) -> tuple[Any, threading.Lock]:
    """The model of ``ref``, loaded once per process and kept; with a lock that serialises its forward passes.

    Also sets the calling task thread's torch threads to the worker's budget (:func:`task_threads`).
    """
    task_threads()  # before a first load, whose parallel ops would open torch's thread pool
    out = _cached_model(ref)
    task_threads()  # and after it: the first load (importing the model's libraries) resets torch's threads
    return out


def _cached_model(ref: ModelRef) -> tuple[Any, threading.Lock]:
    with _CACHE_LOCK:
        if ref.key not in _MODELS:
            from . import models

            model = models.load(ref.source, weights=ref.weights, seed=ref.seed)
            if model.weights_id != ref.weights_id:
                msg = (
                    f"This worker loaded {ref.source!r} with weights {model.weights_id}, but the run uses "
                    f"{ref.weights_id}: the workers must see the same checkpoint as the client."
                )
                raise ValueError(msg)
            _MODELS[ref.key] = model
            _LOCKS[ref.key] = threading.Lock()
        return _MODELS[ref.key], _LOCKS[ref.key]


def n_cached_models() -> int:
    """Number of models this process holds (tests check that workers load each model once)."""
    return len(_MODELS)


# ----------------------------------------------------------------------------------------------------- store


def fingerprint_of(values: Sequence[str]) -> str:
    """sha256 of a sequence of names (obs_names, var_names) for the store's fingerprint."""
    h = hashlib.sha256()
    for v in values:
        h.update(str(v).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


class BlockStore:
    """A zarr group that receives one array block by block and remembers which blocks are finished.

    Layout: ``<key>`` (n_obs x dims float32, one zarr chunk per block, so tasks never write the same chunk),
    ``done`` (one bool per block, set after the block's data), ``stats`` (per-block numbers the parameters are
    reduced from) and the attribute ``scfmkit`` holding the run's identity (model, weights, options, block layout,
    fingerprints of the cells and genes). Opening a store made by another run is refused before anything is written.
    """

    def __init__(self, path: str | Path, key: str, identity: dict[str, Any], *, shape: tuple[int, int], n_stats: int):
        import zarr

        self.path = str(path)
        self.key = key
        self.block_size = int(identity["block_size"])
        self.n_blocks = -(-shape[0] // self.block_size) if shape[0] else 0
        identity = json.loads(json.dumps(identity))  # plain JSON types, as the attribute will hold them
        p = Path(self.path)
        if p.exists():
            try:
                group = zarr.open_group(self.path, mode="r")
            except Exception as err:
                msg = f"{self.path!r} exists and is not a zarr store; choose a new `store=` path."
                raise ValueError(msg) from err
            have = group.attrs.get("scfmkit")
            if not isinstance(have, dict) or have.get("format") != STORE_FORMAT:
                msg = f"{self.path!r} is a zarr store that scfmkit did not write; choose a new `store=` path."
                raise ValueError(msg)
            diff = sorted(
                k for k in set(have["identity"]) | set(identity) if have["identity"].get(k) != identity.get(k)
            )
            if diff:
                shown = ", ".join(f"{k}: store {have['identity'].get(k)!r} vs now {identity.get(k)!r}" for k in diff)
                msg = (
                    f"{self.path!r} holds a run with other inputs or parameters ({shown}); nothing was overwritten. "
                    "Use a new `store=` path, or the same model, options, cells and block size to resume."
                )
                raise ValueError(msg)
            self.group = zarr.open_group(self.path, mode="r+")
        else:
            self.group = zarr.open_group(self.path, mode="w-")
            self.group.create_array(
                key, shape=shape, chunks=(self.block_size, shape[1]), dtype="float32", fill_value=np.nan
            )
            self.group.create_array("done", shape=(self.n_blocks,), chunks=(1,), dtype="bool", fill_value=False)
            self.group.create_array(
                "stats", shape=(self.n_blocks, max(n_stats, 1)), chunks=(1, max(n_stats, 1)), dtype="float64"
            )
            self.group.attrs["scfmkit"] = {"format": STORE_FORMAT, "identity": identity, "key": key}

    def finished(self) -> np.ndarray:
        """Bool per block: written completely."""
        return np.asarray(self.group["done"][:], dtype=bool)

    def stats(self) -> np.ndarray:
        """The per-block stats (rows of unfinished blocks are meaningless)."""
        return np.asarray(self.group["stats"][:])

    def set_params(self, params: dict[str, Any]) -> None:
        """Record the reduced parameters of the finished run."""
        attrs = dict(self.group.attrs["scfmkit"])
        attrs["params"] = json.loads(json.dumps(params, default=_jsonable))
        self.group.attrs["scfmkit"] = attrs

    def array(self):
        """The stored array as a dask array (one chunk per block)."""
        import dask.array as da

        return da.from_zarr(self.path, component=self.key)


def write_block(path: str, key: str, index: int, start: int, values: np.ndarray, stats: np.ndarray) -> None:
    """Write block ``index`` (rows from ``start``) and its stats, then mark it finished (runs inside a task)."""
    import zarr

    group = zarr.open_group(path, mode="r+")
    group[key][start : start + len(values)] = values
    group["stats"][index] = stats
    group["done"][index] = True


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
