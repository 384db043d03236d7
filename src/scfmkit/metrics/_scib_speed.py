"""Compile-once stand-ins for scib-metrics internals that recompile per call: same arithmetic, same numbers.

"Same numbers": bit for bit on the shapes tested (tests/metrics/test_scib_speed.py). Where XLA's float32 rounding
depends on an array's shape (matrix products: cosine distances of near-parallel random-weight embeddings cancel to
1e-3 relative), the original shapes are kept.

scib-metrics' metrics are jax functions, and on a few thousand cells their time is mostly XLA compilation:

- ``KMeans._kmeans_full_run`` is jitted with the ``KMeans`` instance as a static argument, so every call (every
  embedding of every run) compiles the whole k-means loop again; here one module-level jit takes the data-dependent
  tolerance as an argument, so equal shapes share one compilation.
- ``_kbet`` is compiled per (cells, neighbours) shape, and ``kbet_per_label`` calls it on every label's subset; here
  the rows (cells, independent of each other) are padded to a power of two and the padding is cut off afterwards.
- ``silhouette_samples`` (silhouette label, isolated labels, BRAS on every label's subset): its per-label reduction
  of each block of distances likewise, with the padded cells on a label code that the per-label sums drop (the
  distances themselves are computed as scib-metrics does, on the unpadded shapes).
- ``pcr_comparison`` redoes the PCA regression of the unintegrated embedding for every embedding; here it is
  remembered by content for the duration of one scoring.
- ``Benchmarker`` runs a full ``gc.collect()`` before each metric of each embedding (~0.2 s each with jax and numba
  loaded); it is skipped (Python's automatic collection still runs).

:func:`fast_scib` swaps them in for the duration of a ``with`` block and restores the originals afterwards (not
thread-safe: scoring in two threads at once would see each other's swaps).
"""

from __future__ import annotations

import contextlib
import hashlib
from functools import lru_cache, partial

import numpy as np

from scfmkit._utils import logger

_MIN_ROWS = 64
# sha256 (first 16 hex digits) of the scib-metrics modules whose code is mirrored here: scib-metrics 0.5.10, 0.5.7
# (the lower bound; its `_kbet.py` differs in `kbet_per_label` only: `np.in1d` for `np.isin`) and 0.6.1 (its
# `_kbet.py` adds a two-batch check to the public `kbet` only); `_kbet` and `_chi2_cdf` are the same in all three.
# With any other source the originals run unchanged (right, only slower)
_MIRRORED = {
    "scib_metrics.utils._kmeans": {"da39e6866e94f0a9"},
    "scib_metrics.metrics._kbet": {"be0e9c31067063b3", "2409ae7471efd846", "cfb3a8537a56589f"},
    "scib_metrics.utils._silhouette": {"265c651035b9e4a8"},
}


@lru_cache(maxsize=1)
def supported() -> bool:
    """Whether the installed scib-metrics has the exact code these stand-ins mirror."""
    import importlib

    for name, digests in _MIRRORED.items():
        path = importlib.import_module(name).__file__
        with open(path, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest()[:16] not in digests:
                logger.debug("scib-metrics' %s is not the mirrored version; running its own kernels.", name)
                return False
    return True


@lru_cache(maxsize=1)
def _jitted():
    """The jitted kernels, built on first use (jax is imported lazily)."""
    import jax
    import jax.numpy as jnp
    from scib_metrics.metrics._kbet import _chi2_cdf
    from scib_metrics.utils._kmeans import _get_dist_labels, _initialize_plus_plus, _initialize_random

    @partial(jax.jit, static_argnames=("n_clusters", "max_iter", "plus_plus"))
    def kmeans_runs(X, keys, tol, *, n_clusters, max_iter, plus_plus):
        # scib_metrics.utils._kmeans.KMeans._kmeans_full_run (0.5.x) with `self.tol` as the argument `tol`
        initialize = _initialize_plus_plus if plus_plus else _initialize_random

        def full_run(key):
            def _kmeans_step(state):
                centroids, old_inertia, _, n_iter = state
                dist, new_labels = _get_dist_labels(X, centroids)
                counts = (new_labels[jnp.newaxis, :] == jnp.arange(n_clusters)[:, jnp.newaxis]).sum(
                    axis=1, keepdims=True
                )
                counts = jnp.clip(counts, min=1, max=None)
                new_centroids = (
                    jnp.sum(
                        jnp.where(
                            new_labels[:, jnp.newaxis, jnp.newaxis]
                            == jnp.arange(n_clusters)[jnp.newaxis, :, jnp.newaxis],
                            X[:, jnp.newaxis, :],
                            0.0,
                        ),
                        axis=0,
                    )
                    / counts
                )
                new_inertia = jnp.sum(jnp.min(dist, axis=1))
                n_iter = n_iter + 1
                return new_centroids, new_inertia, old_inertia, n_iter

            def _kmeans_convergence(state):
                _, new_inertia, old_inertia, n_iter = state
                cond1 = jnp.abs(old_inertia - new_inertia) > tol
                cond2 = n_iter < max_iter
                return jnp.logical_or(cond1, cond2)[0]

            centroids = initialize(X, n_clusters, key)
            state = (centroids, jnp.inf, jnp.inf, jnp.array([0.0]))
            state = jax.lax.while_loop(_kmeans_convergence, _kmeans_step, state)
            centroids = state[0]
            dist, _ = _get_dist_labels(X, centroids)
            return centroids, jnp.sum(jnp.min(dist, axis=1))

        return jax.lax.map(full_run, keys)

    @partial(jax.jit, static_argnums=2)
    def kbet_rows(neigh_batch_ids, batches, n_batches):
        # scib_metrics.metrics._kbet._kbet (0.5.x) on rows padded with copies of row 0; the expected frequencies
        # count only the real cells' `batches` (the padding is given the out-of-range code n_batches, which bincount
        # drops)
        expected_freq = jnp.bincount(batches, length=n_batches)
        expected_freq = expected_freq / jnp.sum(expected_freq)
        dof = n_batches - 1
        observed_counts = jax.vmap(partial(jnp.bincount, length=n_batches))(neigh_batch_ids)
        expected_counts = expected_freq * neigh_batch_ids.shape[1]
        test_statistics = jnp.sum(jnp.square(observed_counts - expected_counts) / expected_counts, axis=1)
        p_values = 1 - jax.vmap(_chi2_cdf, in_axes=(None, 0))(dof, test_statistics)
        return test_statistics, p_values

    @jax.jit
    def silhouette_finish(intra_clust_dists, inter_clust_dists, labels, label_freqs):
        # the end of scib_metrics.utils.silhouette_samples (0.5.x), elementwise
        denom = jnp.take(label_freqs - 1, labels, mode="clip")
        intra_clust_dists /= denom
        sil_samples = inter_clust_dists - intra_clust_dists
        sil_samples /= jnp.maximum(intra_clust_dists, inter_clust_dists)
        return jnp.nan_to_num(sil_samples)

    return kmeans_runs, kbet_rows, silhouette_finish


def _fit(self, X: np.ndarray) -> None:
    """``KMeans._fit`` (scib-metrics 0.5.x) through the shared jit."""
    import jax
    import jax.numpy as jnp
    from scib_metrics.utils._kmeans import _get_dist_labels, _initialize_plus_plus
    from scib_metrics.utils._utils import get_ndarray

    kmeans_runs, _, _ = _jitted()
    all_centroids, all_inertias = kmeans_runs(
        X,
        jax.random.split(self.seed, self.n_init),
        self.tol,
        n_clusters=self.n_clusters,
        max_iter=self.max_iter,
        plus_plus=self._initialize is _initialize_plus_plus,
    )
    i = jnp.argmin(all_inertias)
    self.cluster_centroids_ = get_ndarray(all_centroids[i])
    self.inertia_ = get_ndarray(all_inertias[i])
    _, labels = _get_dist_labels(X, self.cluster_centroids_)
    self.labels_ = get_ndarray(labels)


def _kbet(neigh_batch_ids, batches, n_batches: int):
    """``scib_metrics.metrics._kbet._kbet`` with the cells padded to a power of two (one compilation per size)."""
    _, kbet_rows, _ = _jitted()
    neigh_batch_ids = np.asarray(neigh_batch_ids)
    batches = np.asarray(batches)
    n = neigh_batch_ids.shape[0]
    size = max(_MIN_ROWS, 1 << (n - 1).bit_length())
    ids = np.empty((size, neigh_batch_ids.shape[1]), dtype=neigh_batch_ids.dtype)
    ids[:n] = neigh_batch_ids
    ids[n:] = neigh_batch_ids[0]
    b = np.full(size, int(n_batches), dtype=batches.dtype)
    b[:n] = batches
    test_statistics, p_values = kbet_rows(ids, b, int(n_batches))
    return np.asarray(test_statistics)[:n], np.asarray(p_values)[:n]


def _silhouette_samples(X, labels, chunk_size=256, metric="euclidean", between_cluster_distances="nearest"):
    """``scib_metrics.utils.silhouette_samples`` reducing blocks padded to a power of two (one compilation per size).

    Padded cells get the out-of-range label code ``n_labels``, which the per-label distance sums (``bincount``) drop,
    so the real cells' sums are those of the unpadded call; the padded rows are cut off at the end.
    """
    import jax.numpy as jnp
    import pandas as pd
    from scib_metrics.utils._dist import cdist
    from scib_metrics.utils._silhouette import _silhouette_reduce
    from scib_metrics.utils._utils import get_ndarray

    X = np.asarray(X)
    if X.shape[0] != labels.shape[0]:
        msg = "X and labels should have the same number of samples"
        raise ValueError(msg)
    n = X.shape[0]
    codes = np.asarray(pd.Categorical(labels).codes, dtype=np.int32)
    label_freqs = jnp.bincount(jnp.asarray(codes))
    size = max(_MIN_ROWS, 1 << (n - 1).bit_length())
    codes_p = np.full(size, label_freqs.shape[0], dtype=np.int32)
    codes_p[:n] = codes
    step = min(chunk_size, size)
    intra, inter = [], []
    for start in range(0, n, chunk_size):
        # the distances exactly as scib-metrics computes them (same shapes: cosine distances of near-parallel cells
        # are sums that cancel, whose float32 rounding depends on the shape), zero-padded for the reduction
        D = np.asarray(cdist(X[start : start + chunk_size], X, metric=metric))
        D = np.pad(D, ((0, step - D.shape[0]), (0, size - n)))
        a, b = _silhouette_reduce(
            D, start=start, labels=codes_p, label_freqs=label_freqs, between_cluster_distances=between_cluster_distances
        )
        intra.append(np.asarray(a))
        inter.append(np.asarray(b))
    intra, inter = np.concatenate(intra), np.concatenate(inter)
    _, _, finish = _jitted()
    return get_ndarray(finish(intra, inter, codes_p[: len(intra)], label_freqs))[:n]


def _digest(a) -> tuple:
    a = np.ascontiguousarray(np.asarray(a))
    if a.dtype == object:
        a = a.astype(str)
    return (a.shape, a.dtype.str, hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest())


class _NoGC:
    """Stands in for the ``gc`` module inside ``scib_metrics.benchmark._core``."""

    @staticmethod
    def collect(*args, **kwargs) -> int:
        return 0


@contextlib.contextmanager
def fast_scib():
    """Swap in the compile-once kernels (and a memoised unintegrated PCR) while the block runs."""
    if not supported():
        yield
        return
    import scib_metrics.benchmark._core as core
    import scib_metrics.metrics._isolated_labels as iso_mod
    import scib_metrics.metrics._kbet as kbet_mod
    import scib_metrics.metrics._pcr_comparison as pcr_mod
    import scib_metrics.metrics._silhouette as sil_mod
    from scib_metrics.utils._kmeans import KMeans

    original_pcr = pcr_mod.principal_component_regression
    memo: dict = {}

    def pcr(X, covariate, categorical=False, n_components=None):
        key = (_digest(X), _digest(covariate), bool(categorical), n_components)
        if key not in memo:
            memo[key] = original_pcr(X, covariate, categorical=categorical, n_components=n_components)
        return memo[key]

    saved = [(KMeans, "_fit", KMeans.__dict__["_fit"]), (kbet_mod, "_kbet", kbet_mod._kbet), (core, "gc", core.gc)]
    saved.append((pcr_mod, "principal_component_regression", original_pcr))
    saved += [(mod, "silhouette_samples", mod.silhouette_samples) for mod in (sil_mod, iso_mod)]
    sil_mod.silhouette_samples = iso_mod.silhouette_samples = _silhouette_samples
    KMeans._fit = _fit
    kbet_mod._kbet = _kbet
    core.gc = _NoGC()
    pcr_mod.principal_component_regression = pcr
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
