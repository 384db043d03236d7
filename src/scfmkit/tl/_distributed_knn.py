"""Blockwise kNN label transfer of :func:`scfmkit.tl.map_to_reference`: query blocks as dask tasks.

The reference embedding and labels are one task input, sent once to each worker; every query block runs the same
exact kernel (:func:`scfmkit._knn.weighted_knn_transfer`) as the in-memory path. Each query cell's neighbours, weights
and vote depend on that cell and the reference only, so the blocks concatenate to the in-memory result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _dask
from .._knn import weighted_knn_transfer

__all__ = ["weighted_knn_transfer_blockwise"]


def _knn_task(query: Any, reference_and_labels: tuple[np.ndarray, np.ndarray], options: dict[str, Any]):
    reference, labels = reference_and_labels
    return weighted_knn_transfer(np.asarray(query), reference, labels, **options)


def weighted_knn_transfer_blockwise(
    query: Any,
    reference: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = 15,
    uncertainty_threshold: float | None = None,
    chunk_size: int | None = None,
    block_size: int | None = None,
) -> dict[str, np.ndarray]:
    """:func:`~scfmkit._knn.weighted_knn_transfer` of a dask (or in-memory) ``query``, one task per row block.

    Returns the same dict as the in-memory kernel, rows in query order.
    """
    import dask

    Q, _ = _dask.as_row_blocks(query, block_size)
    reference = np.asarray(reference)
    labels = np.asarray(labels)
    if Q.shape[1] != reference.shape[1]:
        msg = f"query and reference must have the same number of dims, got {Q.shape} and {reference.shape}."
        raise ValueError(msg)
    ref = dask.delayed((reference, labels), pure=True)
    options = {"k": k, "uncertainty_threshold": uncertainty_threshold, "chunk_size": chunk_size, "show_progress": False}
    tasks = [dask.delayed(_knn_task)(b, ref, options) for b in Q.to_delayed().ravel()]
    parts = _dask.run_tasks(tasks, desc="kNN blocks")
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0] if key != "classes"}
    out["classes"] = parts[0]["classes"]
    return out
