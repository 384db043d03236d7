"""Metrics: pure array kernels and tidy-DataFrame wrappers (perturbation, integration, label transfer)."""

from ._integration import integration, label_transfer
from ._perturbation import (
    PERTURBATION_METRICS,
    centroid_accuracy,
    direction_agreement,
    l2_distance,
    mse,
    pearson,
    pearson_delta,
    perturbation_metrics,
    spearman_delta,
    top_expressed_genes,
)
