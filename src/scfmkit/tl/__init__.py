"""Tools: embeddings, baselines, perturbation prediction, reference mapping (AnnData/MuData wrappers)."""

from ._embed import embed, embed_genes
from ._baselines import baselines
