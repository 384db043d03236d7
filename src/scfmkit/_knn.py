"""Exact Euclidean kNN and scArches' distance-weighted label vote: numpy kernels (no AnnData).

Used by :func:`scfmkit.tl.map_to_reference` and by the metrics, which must not import :mod:`scfmkit.tl`.
"""

from __future__ import annotations

import numpy as np

from ._utils import progress

__all__ = ["UNKNOWN", "knn_search", "knn_weights", "weighted_knn_transfer"]

UNKNOWN = "Unknown"


def knn_search(
    query: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    chunk_size: int | None = None,
    show_progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest reference cells of every query cell (brute force, chunked over query cells).

    Parameters
    ----------
    query, reference
        Cells x dims arrays in the same space.
    k
        Neighbours per query cell (at most the number of reference cells).
    chunk_size
        Query cells per call to scikit-learn (progress-bar steps; scikit-learn blocks the distance computation into
        small tiles itself, so memory stays bounded for any reference size).
    show_progress
        Progress bar over blocks (default :attr:`scfmkit.settings.progress`).

    Returns
    -------
    ``(distances, indices)``, each query cells x ``k``, sorted by distance. Candidates come from scikit-learn's
    brute-force search (float32 unless both inputs are float64); the returned distances are recomputed in float64.
    """
    Q = np.asarray(query)
    R = np.asarray(reference)
    if Q.ndim != 2 or R.ndim != 2 or Q.shape[1] != R.shape[1]:
        msg = f"query and reference must be 2-d with the same number of dims, got {Q.shape} and {R.shape}."
        raise ValueError(msg)
    n_ref = R.shape[0]
    if not 1 <= k <= n_ref:
        msg = f"k must be between 1 and the number of reference cells ({n_ref}), got {k}."
        raise ValueError(msg)
    if not (np.isfinite(Q).all() and np.isfinite(R).all()):
        msg = "Embeddings contain NaN or infinite values; drop or recompute those cells first."
        raise ValueError(msg)
    from sklearn.neighbors import NearestNeighbors

    if chunk_size is None:
        chunk_size = 4096
    dtype = np.float64 if np.asarray(R).dtype == np.float64 and np.asarray(Q).dtype == np.float64 else np.float32
    R_ = np.ascontiguousarray(R, dtype=dtype)
    R64 = np.asarray(R, dtype=np.float64)
    # sklearn's brute-force search (blocked distance computation + per-row top-k in compiled code, bounded memory)
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(R_)
    dist = np.empty((Q.shape[0], k), dtype=np.float64)
    idx = np.empty((Q.shape[0], k), dtype=np.int64)
    starts = range(0, Q.shape[0], chunk_size)
    for start in progress(starts, total=len(starts), desc="kNN", unit="block", enabled=show_progress):
        q64 = np.asarray(Q[start : start + chunk_size], dtype=np.float64)
        cand = nn.kneighbors(np.ascontiguousarray(q64, dtype=dtype), return_distance=False)
        diff = R64[cand] - q64[:, None, :]
        exact = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        order = np.argsort(exact, axis=1, kind="stable")
        dist[start : start + len(q64)] = np.take_along_axis(exact, order, axis=1)
        idx[start : start + len(q64)] = np.take_along_axis(cand, order, axis=1)
    return dist, idx


def knn_weights(distances: np.ndarray) -> np.ndarray:
    """ScArches' weighted-kNN kernel: per query cell ``w_j ∝ exp(-d_j / (2 / sd(d))^2)``, rows summing to 1.

    ``sd`` is the (population) standard deviation of the cell's k neighbour distances; when all k distances are equal
    the weights are uniform.
    """
    d = np.asarray(distances, dtype=np.float64)
    sd = d.std(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(sd > 0, (2.0 / np.where(sd > 0, sd, 1.0)) ** 2, np.inf)
        w = np.exp(-d / scale)
    return w / w.sum(axis=1, keepdims=True)


def weighted_knn_transfer(
    query: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = 15,
    uncertainty_threshold: float | None = None,
    chunk_size: int | None = None,
    show_progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """Distance-weighted kNN label transfer with scArches' uncertainty (pure numpy, no AnnData).

    Each query cell gets the label with the largest summed weight :func:`knn_weights` among its ``k`` nearest
    reference cells (:func:`knn_search`); its uncertainty is ``max(1 - that weight share, 0)``. Ties go to the label
    that sorts first. Cells with uncertainty above ``uncertainty_threshold`` are labelled ``"Unknown"``.

    Returns
    -------
    dict with ``pred`` (object array of labels), ``uncertainty`` (float64), ``best`` (label before thresholding),
    ``distances``, ``indices``, ``weights`` (query x k) and ``classes`` (sorted reference labels).
    """
    labels = np.asarray(labels)
    if labels.shape[0] != np.shape(reference)[0]:
        msg = f"labels has {labels.shape[0]} entries but the reference has {np.shape(reference)[0]} cells."
        raise ValueError(msg)
    classes, codes = np.unique(labels, return_inverse=True)
    dist, idx = knn_search(query, reference, k, chunk_size=chunk_size, show_progress=show_progress)
    w = knn_weights(dist)
    n_q, n_c = dist.shape[0], len(classes)
    flat = (np.arange(n_q)[:, None] * n_c + codes[idx]).ravel()
    votes = np.bincount(flat, weights=w.ravel(), minlength=n_q * n_c).reshape(n_q, n_c)
    best_code = votes.argmax(axis=1)
    share = votes[np.arange(n_q), best_code]
    uncertainty = np.maximum(1.0 - share, 0.0)
    best = classes[best_code].astype(object)
    pred = best.copy()
    if uncertainty_threshold is not None:
        pred[uncertainty > uncertainty_threshold] = UNKNOWN
    return {
        "pred": pred,
        "best": best,
        "uncertainty": uncertainty,
        "distances": dist,
        "indices": idx,
        "weights": w,
        "classes": classes,
    }
