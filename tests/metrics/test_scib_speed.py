"""The compile-once stand-ins of ``fast_scib`` give scib-metrics' own numbers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scib_metrics")

from scfmkit.metrics._scib_speed import supported

# the stand-ins are compared with the originals only where they are used (test_installed_... flags the others)
mirrored = pytest.mark.skipif(not supported(), reason="scib-metrics is not a mirrored version: the originals run")


def _labels(rng, n, k):
    return np.array([f"l{i}" for i in rng.integers(0, k, n)], dtype=object)


@mirrored
@pytest.mark.parametrize(("n", "k", "n_batches"), [(37, 11, 3), (300, 71, 2)])
def test_kbet_kernel_is_the_reference(n, k, n_batches):
    from scib_metrics.metrics import _kbet

    from scfmkit.metrics._scib_speed import _kbet as fast_kbet

    rng = np.random.default_rng(n)
    ids = rng.integers(0, n_batches, (n, k)).astype(np.int8)
    batches = rng.integers(0, n_batches, n).astype(np.int8)
    ref = [np.asarray(x) for x in _kbet._kbet(ids, batches, n_batches)]
    got = fast_kbet(ids, batches, n_batches)
    for a, b in zip(ref, got, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@mirrored
def test_kmeans_is_the_reference():
    from scib_metrics.utils import KMeans

    from scfmkit.metrics._scib_speed import _fit, fast_scib

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(150, 6)) + rng.integers(0, 4, 150)[:, None]).astype(np.float32)
    ref = KMeans(4).fit(X.copy())
    with fast_scib():
        assert KMeans._fit is _fit
        got = [KMeans(4).fit(X.copy()), KMeans(4).fit(X.copy())]  # the second call reuses the compilation
    for km in got:
        np.testing.assert_array_equal(km.labels_, ref.labels_)
        np.testing.assert_array_equal(km.cluster_centroids_, ref.cluster_centroids_)
        assert km.inertia_ == ref.inertia_


@mirrored
@pytest.mark.parametrize(
    ("n", "metric", "between", "parallel"),
    [(130, "euclidean", "nearest", False), (80, "cosine", "mean_other", True)],
)
def test_silhouette_is_the_reference(n, metric, between, parallel):
    from scib_metrics.utils import silhouette_samples

    from scfmkit.metrics._scib_speed import _silhouette_samples

    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    if parallel:  # near-parallel cells (random-weight FM embeddings): cosine distances are cancelling float32 sums
        X = (rng.normal(size=24) + 0.02 * rng.normal(size=(n, 24))).astype(np.float32)
    labels = _labels(rng, n, 3)
    ref = silhouette_samples(X, labels, chunk_size=32, metric=metric, between_cluster_distances=between)
    got = _silhouette_samples(X, labels, chunk_size=32, metric=metric, between_cluster_distances=between)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def test_installed_scib_metrics_is_the_mirrored_one():
    # if this fails after an upgrade, scoring still gives the right numbers but recompiles per call (slow): compare
    # the new scib-metrics modules with the stand-ins in _scib_speed.py and update the digests there
    assert supported()


@mirrored
def test_pcr_memo_and_originals_restored():
    import scib_metrics.benchmark._core as core
    import scib_metrics.metrics._kbet as kbet_mod
    import scib_metrics.metrics._pcr_comparison as pcr_mod
    import scib_metrics.metrics._silhouette as sil_mod
    from scib_metrics import pcr_comparison
    from scib_metrics.utils import KMeans

    from scfmkit.metrics import _scib_speed
    from scfmkit.metrics._scib_speed import fast_scib

    before = (KMeans._fit, kbet_mod._kbet, core.gc, pcr_mod.principal_component_regression, sil_mod.silhouette_samples)
    rng = np.random.default_rng(0)
    pre, post = rng.normal(size=(60, 4)), rng.normal(size=(60, 3))
    batch = np.array(["a", "b", "c"] * 20)
    ref = pcr_comparison(pre, post, batch, categorical=True)
    with fast_scib():
        assert kbet_mod._kbet is _scib_speed._kbet and sil_mod.silhouette_samples is _scib_speed._silhouette_samples
        got = [pcr_comparison(pre, post, batch, categorical=True), pcr_comparison(pre, post, batch, categorical=True)]
    assert got == [ref, ref]
    after = (KMeans._fit, kbet_mod._kbet, core.gc, pcr_mod.principal_component_regression, sil_mod.silhouette_samples)
    assert all(a is b for a, b in zip(before, after, strict=True))
