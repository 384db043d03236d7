"""Metrics: pure array kernels and tidy-DataFrame wrappers (perturbation, integration, label transfer, dependency)."""

from ._celleval import (
    CellSet,
    cell_mean_baseline,
    celleval_score,
    de_overlap,
    de_ranking,
    de_test,
    discrimination_score,
    mean_absolute_error,
    replicate_score,
    split_halves,
)
from ._dependency import (
    auprc,
    auroc,
    de_effects,
    dependency_validation,
    edges_truth,
    measured_effects,
)
from ._integration import integration, label_transfer
from ._perturbation import (
    centroid_accuracy,
    direction_agreement,
    l2_distance,
    mse,
    pearson,
    pearson_delta,
    spearman_delta,
    top_expressed_genes,
)
from ._perturbation_scoring import cell_set, perturbation_metrics
from ._summary import summarize_benchmark
from ._table import GENE_SETS, PERTURBATION_METRIC_TABLE, PERTURBATION_METRICS, PerturbationMetric, metric_table
