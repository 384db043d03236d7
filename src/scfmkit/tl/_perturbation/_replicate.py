"""The ``replicate`` row of a perturbation benchmark: half of the cells scored as the prediction of the other half."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from scfmkit._utils import logger
from scfmkit.metrics._celleval import split_halves

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

    from scfmkit.metrics._celleval import CellSet

__all__ = ["replicate_seed", "score_replicate"]


def replicate_seed(seed: int) -> int:
    """The split seed of a benchmark seed: cell-eval2's derivation (``SeedSequence(seed).generate_state(1)[0]``)."""
    return int(np.random.SeedSequence(int(seed)).generate_state(1)[0])


def score_replicate(
    pdata: AnnData,
    cells: CellSet,
    conditions: Sequence[str],
    *,
    seed: int,
    train: Sequence[str],
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Score a split-half replicate of the data on ``conditions``: the technical ceiling of every metric.

    The cells of each condition and of the control are split into two disjoint halves of ``floor(n / 2)`` cells
    (:func:`scfmkit.metrics.split_halves`, cell-eval2's split; seed from :func:`replicate_seed`); half B is scored as
    the prediction of half A, each half with its own control cells (cell-eval2's ``control_source="pred"``). Half A
    replaces the observed pseudobulk of those conditions and of the control; the other conditions (training, Systema's
    references) stay as observed.

    Parameters
    ----------
    pdata
        The benchmark's pseudobulk.
    cells
        Its cells (:func:`scfmkit.metrics.cell_set`).
    conditions
        The scored conditions.
    seed
        Benchmark seed.
    train
        Training conditions (Systema's reference).
    metrics
        Metric names (default: all of the table).

    Returns
    -------
    :func:`scfmkit.metrics.perturbation_metrics`' tidy table for the replicate.
    """
    import pandas as pd

    from scfmkit.metrics._perturbation_scoring import perturbation_metrics

    control = cells.control
    keep = np.isin(cells.labels, [*conditions, control])
    rows = np.flatnonzero(keep)
    a, b = (rows[h] for h in split_halves(cells.labels[rows], rng=replicate_seed(seed)))
    half_a, half_b = cells.subset(a), cells.subset(b)
    scored = [c for c in conditions if half_a.has(c)]
    if len(scored) < len(conditions):
        logger.info("replicate: %d condition(s) with fewer than 2 cells not split", len(conditions) - len(scored))
    data = pdata.copy()
    X = np.array(data.X.toarray() if hasattr(data.X, "toarray") else data.X, dtype=np.float64)
    names = list(data.obs_names.astype(str))
    for c in [*scored, control]:
        X[names.index(c)] = half_a.mean(c)
    ctrl = half_a.mean(control)
    data.X = X
    data.var["control_mean"] = ctrl
    if "delta" in data.layers:
        data.layers["delta"] = X - ctrl
    pred = pd.DataFrame([half_b.mean(c) for c in scored], index=scored, columns=data.var_names)
    return perturbation_metrics(data, pred, metrics=metrics, train=train, cells=half_a, pred_cells=half_b)
