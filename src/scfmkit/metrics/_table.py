"""The one table of perturbation metrics: name -> kernel, inputs, gene set, level, whether it needs cells.

:func:`scfmkit.metrics.perturbation_metrics` scores by reading this table, :func:`scfmkit.pl.perturbation_metrics`
reads each metric's direction from it, and :func:`metric_table` renders it for the docs. A new metric is one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _celleval as ce
from . import _perturbation as pk

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["GENE_SETS", "PERTURBATION_METRICS", "PERTURBATION_METRIC_TABLE", "PerturbationMetric", "metric_table"]

#: What each ``genes`` value of the table means.
GENE_SETS = {
    "all": "all genes",
    "top_expressed": "the `n_top_expressed` genes most expressed in control (Ahlmann-Eltze: 1,000)",
    "top_de": "the condition's top DE genes (`uns['perturbation']['top_de_genes']`: t-test, GEARS' 20)",
    "not_target": "all genes but the condition's own target gene (the column named like the condition, cell-eval)",
    "celleval_de": "the genes cell-eval's DE test calls DE (Wilcoxon vs control cells, BH fdr < 0.05), by |log2 FC|",
}


@dataclass(frozen=True)
class PerturbationMetric:
    """One metric of :data:`PERTURBATION_METRIC_TABLE`.

    Parameters
    ----------
    name
        The name in the tidy tables.
    kernel
        The array kernel that computes it.
    inputs
        Names of the positional arguments, read from the scoring context: per condition ``pred``, ``true``
        (pseudobulks), ``control`` (observed control mean), ``perturbed_centroid`` (mean of the training
        perturbations), ``true_de`` / ``pred_de`` (cell-eval DE rankings); per panel ``pred``, ``true`` (conditions x
        genes).
    context
        Keyword arguments read from the panel context (``others``: observed centroids of the unscored conditions;
        ``pred_control`` / ``true_control``: the control profiles effects are taken from; ``exclude``: each
        condition's target-gene column).
    genes
        Key of :data:`GENE_SETS`; ``top_expressed`` and ``top_de`` are passed to the kernel as ``genes=``.
    level
        ``"condition"`` (the kernel scores one condition) or ``"panel"`` (all scored conditions at once).
    needs_cells
        The metric runs a test on cells (the observed cells, and the predicted profile repeated per cell).
    higher_is_better
        Direction.
    source
        Where the definition comes from.
    description
        One line for the docs.
    kwargs
        Fixed keyword arguments of the kernel.
    """

    name: str
    kernel: Callable[..., Any]
    inputs: tuple[str, ...]
    genes: str = "all"
    level: str = "condition"
    needs_cells: bool = False
    higher_is_better: bool = True
    source: str = ""
    description: str = ""
    context: tuple[str, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


_PTC = ("pred", "true", "control")
_PT = ("pred", "true")
_AE = "Ahlmann-Eltze et al. 2025"
_GEARS = "GEARS (Roohani et al. 2024)"
_SYS = "Systema (Vinas Torne et al. 2025)"
_CZ = "cz-benchmarks"
_CE = "cell-eval 0.8.1 (VCC 2025)"

# fmt: off
_ENTRIES = [
    PerturbationMetric("pearson_delta_top1000", pk.pearson_delta, _PTC, "top_expressed", source=_AE,
                       description="Pearson of the changes to control"),
    PerturbationMetric("l2_top1000", pk.l2_distance, _PT, "top_expressed", higher_is_better=False, source=_AE,
                       description="Euclidean distance of the profiles"),
    PerturbationMetric("pearson", pk.pearson, _PT, source=_GEARS, description="Pearson of the profiles"),
    PerturbationMetric("pearson_delta", pk.pearson_delta, _PTC, source=_GEARS,
                       description="Pearson of the changes to control"),
    PerturbationMetric("mse", pk.mse, _PT, higher_is_better=False, source=_GEARS, description="mean squared error"),
    PerturbationMetric("pearson_de", pk.pearson, _PT, "top_de", source=_GEARS, description="Pearson of the profiles"),
    PerturbationMetric("pearson_delta_de", pk.pearson_delta, _PTC, "top_de", source=_GEARS,
                       description="Pearson of the changes to control"),
    PerturbationMetric("mse_de", pk.mse, _PT, "top_de", higher_is_better=False, source=_GEARS,
                       description="mean squared error"),
    PerturbationMetric("direction_de", pk.direction_agreement, _PTC, "top_de", source=_GEARS,
                       description="fraction of genes whose change has the observed sign"),
    PerturbationMetric("centroid_accuracy", pk.centroid_accuracy, _PT, level="panel", context=("others",),
                       source=_SYS, description="fraction of other observed centroids farther than the own one"),
    PerturbationMetric("pearson_delta_pert", pk.pearson_delta, ("pred", "true", "perturbed_centroid"), source=_SYS,
                       description="Pearson of the changes to the mean training perturbation"),
    PerturbationMetric("spearman_lfc", pk.spearman_delta, _PTC, source=_CZ,
                       description="Spearman of the log fold changes to control"),
    PerturbationMetric("spearman_lfc_de", pk.spearman_delta, _PTC, "top_de", source=_CZ,
                       description="Spearman of the log fold changes to control"),
    PerturbationMetric("mae", ce.mean_absolute_error, _PT, higher_is_better=False, source=_CE,
                       description="mean absolute error of the profiles"),
    PerturbationMetric("discrimination_score_l1", ce.discrimination_score, _PT, "not_target", level="panel",
                       context=("pred_control", "true_control", "exclude"), source=_CE,
                       description="1 - rank/n of the own observed effect among all by L1 distance to the predicted"),
    PerturbationMetric("overlap_at_N", ce.de_overlap, ("true_de", "pred_de"), "celleval_de", needs_cells=True,
                       source=_CE, description="share of the N observed DE genes among the top-N predicted DE genes"),
    PerturbationMetric("precision_at_N", ce.de_overlap, ("true_de", "pred_de"), "celleval_de", needs_cells=True,
                       source=_CE, kwargs={"metric": "precision"},
                       description="share of the predicted DE genes that are observed DE genes"),
]
# fmt: on

#: name -> :class:`PerturbationMetric`, in table order.
PERTURBATION_METRIC_TABLE: dict[str, PerturbationMetric] = {m.name: m for m in _ENTRIES}
#: The metric names, in table order.
PERTURBATION_METRICS = tuple(PERTURBATION_METRIC_TABLE)


def metric_table() -> pd.DataFrame:
    """The metric table as a DataFrame (one row per metric), e.g. for the docs.

    Returns
    -------
    Columns ``metric``, ``kernel``, ``genes`` (with :data:`GENE_SETS`' meaning in ``gene_set``), ``level``,
    ``needs_cells``, ``higher_is_better``, ``source``, ``description``.
    """
    import pandas as pd

    rows = [
        {
            "metric": m.name,
            "kernel": f"scfmkit.metrics.{m.kernel.__name__}",
            "genes": m.genes,
            "gene_set": GENE_SETS[m.genes],
            "level": m.level,
            "needs_cells": m.needs_cells,
            "higher_is_better": m.higher_is_better,
            "source": m.source,
            "description": m.description,
        }
        for m in PERTURBATION_METRIC_TABLE.values()
    ]
    return pd.DataFrame(rows)
