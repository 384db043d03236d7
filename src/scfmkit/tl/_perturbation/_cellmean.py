"""``cell_mean``: cell-eval's baseline prediction (the Virtual Cell Challenge 2025 floor)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scfmkit.metrics._celleval import cell_mean_baseline

from ._predictor import PerturbationPredictor, register_predictor

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["CellMeanPredictor"]


class CellMeanPredictor(PerturbationPredictor):
    """``cell_mean``: every condition predicted as the mean of the training condition means, the control's included.

    cell-eval's ``build_base_mean_adata`` (the baseline its normalised score is measured against). It differs from
    ``mean`` (control plus the average training change, the control left out) by giving the control one share.
    """

    name = "cell_mean"

    def _fit(self, pdata: AnnData) -> None:
        self.profile = cell_mean_baseline(self.train_X)

    def _predict_one(self, condition: str) -> np.ndarray:
        return self.profile.copy()


register_predictor("cell_mean", CellMeanPredictor)
