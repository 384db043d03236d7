"""Preprocessing: gene alignment, tokenisation, perturbation pseudobulks and splits."""

from ._genes import align_genes
from ._tokenize import tokenize
from ._perturbation import parse_condition, pseudobulk_perturbations, split_perturbations
from ..models.scgpt import bin_scgpt
