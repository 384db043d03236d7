"""The floors and the additive baseline: ``control``, ``mean``, ``additive``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._predictor import PerturbationPredictor, register_predictor

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["AdditivePredictor", "ControlPredictor", "MeanPredictor"]


class ControlPredictor(PerturbationPredictor):
    """``control``: no change; every condition is predicted as the control mean."""

    name = "control"

    def _predict_one(self, condition: str) -> np.ndarray:
        return self.ctrl.copy()


class MeanPredictor(PerturbationPredictor):
    """``mean``: the control mean plus the average change of all training perturbations."""

    name = "mean"

    def _fit(self, pdata: AnnData) -> None:
        pert = ~self.train_is_ctrl
        if not pert.any():
            msg = "The 'mean' predictor needs at least one perturbed training condition."
            raise ValueError(msg)
        self.mean_delta = self.train_delta[pert].mean(0)

    def _predict_one(self, condition: str) -> np.ndarray:
        return self.ctrl + self.mean_delta


class AdditivePredictor(PerturbationPredictor):
    """``additive``: control plus the sum of the training single-perturbation changes of the condition's genes.

    Only conditions whose every gene was perturbed alone in training can be predicted; others are refused.
    """

    name = "additive"

    def _fit(self, pdata: AnnData) -> None:
        self.single_delta = {g[0]: d for g, d in zip(self.train_genes, self.train_delta, strict=True) if len(g) == 1}

    def why_not(self, condition: str) -> str | None:
        genes = self.genes_of(condition)
        missing = [g for g in genes if g not in self.single_delta]
        if missing:
            return f"no training single perturbation of {missing}"
        return None

    def _predict_one(self, condition: str) -> np.ndarray:
        pred = self.ctrl.copy()
        for g in self.genes_of(condition):
            pred = pred + self.single_delta[g]
        return pred


register_predictor("control", ControlPredictor)
register_predictor("mean", MeanPredictor)
register_predictor("additive", AdditivePredictor)
