"""Preprocessing: gene alignment, tokenisation, perturbation pseudobulks and splits."""

from ._binning import bin_scgpt
from ._genes import align_genes
from ._perturbation import parse_condition, pseudobulk_perturbations, split_perturbations
from ._tokenize import tokenize
