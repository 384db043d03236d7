"""Plots (matplotlib; every function takes ``show``/``return_fig`` like scanpy and pertpy)."""

from ._dependency import gene_dependency, gene_dependents
from ._integration import integration, reference_mapping
from ._perturbation import perturbation_metrics, perturbation_scatter
