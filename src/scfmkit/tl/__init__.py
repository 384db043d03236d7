"""Tools: embeddings, baselines, fine-tuning, perturbation prediction, gene dependency maps, reference mapping."""

from scfmkit.metrics._summary import summarize_benchmark  # the statistics of a benchmark table

from ._annotation_benchmark import benchmark_annotation
from ._baselines import baselines
from ._dependency import gene_dependency
from ._embed import embed, embed_genes
from ._finetune import FineTunedClassifier, annotate, finetune, load_classifier
from ._mapping import map_to_reference
from ._multimodal import joint_embedding, modality_embedding
from ._perturbation import (
    GeneformerProbePredictor,
    PCAProbePredictor,
    PerturbationPredictor,
    ScGPTPredictor,
    available_predictors,
    benchmark_perturbation,
    fit_predictor,
    geneformer_perturb,
    predict_perturbation,
    register_predictor,
)
