"""Perturbation-effect prediction: predictors and their registry, the benchmark loop, in-silico perturbation.

Every predictor has one interface: ``fit`` on the training conditions of a pseudobulk (built by
:func:`scfmkit.pp.pseudobulk_perturbations`), then ``predict`` named conditions (mean log-normalised expression).
Predictors are looked up by name in a registry (:func:`available_predictors`, :func:`register_predictor`).
Geneformer's in-silico perturbation predicts *embedding* shifts, not expression: :func:`geneformer_perturb`.
"""

from . import _cellmean, _linear, _probe, _scgpt, _simple  # register the built-in predictors
from ._api import fit_predictor, predict_perturbation
from ._benchmark import benchmark_perturbation
from ._isp import geneformer_perturb
from ._linear import LinearPredictor
from ._predictor import PerturbationPredictor, available_predictors, register_predictor
from ._probe import GeneformerProbePredictor, PCAProbePredictor
from ._replicate import score_replicate
from ._scgpt import ScGPTPredictor

__all__ = [
    "GeneformerProbePredictor",
    "PCAProbePredictor",
    "LinearPredictor",
    "PerturbationPredictor",
    "ScGPTPredictor",
    "available_predictors",
    "benchmark_perturbation",
    "fit_predictor",
    "geneformer_perturb",
    "predict_perturbation",
    "register_predictor",
    "score_replicate",
]
