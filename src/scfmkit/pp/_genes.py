"""``fm.pp.align_genes``: how the genes of a dataset map onto a model's vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import models
from .._utils import get_modality, logger

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["align_genes"]


def align_genes(
    adata: AnnData | MuData,
    model: str | Path | models.FoundationModel = "geneformer-v1",
    *,
    gene_key: str | None = None,
    gene_id_type: str = "auto",
    mod: str | None = "rna",
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Match the genes of ``adata`` to a model's vocabulary and record the coverage.

    Needs only the model's dictionaries (weights are not loaded when ``weights='random'`` suffices).

    Parameters
    ----------
    adata
        Cells x genes; a MuData is used through modality ``mod``.
    model
        Model name, directory or loaded model (see :func:`scfmkit.models.load`).
    gene_key
        ``var`` column with gene ids or symbols (default ``var_names``).
    gene_id_type
        ``"auto"`` (Ensembl ids if most names look like ``ENSG...``), ``"ensembl"`` or ``"symbol"``.
    mod
        Modality of a MuData.
    key_added
        Prefix of the written keys (default the model family, e.g. ``"geneformer"``).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy. Writes

    - ``var['<key>_id']``: the model gene id each gene maps to (empty string when none);
    - ``var['<key>_token']``: its token id, -1 when the gene is not in the vocabulary;
    - ``uns['<key>_genes']``: ``n_vars``, ``n_vars_matched``, ``n_genes_matched``, ``frac_vars_matched``.
    """
    data = adata.copy() if copy else adata
    target = get_modality(data, mod)
    fm_model = models.load(model, weights="random") if not isinstance(model, models.FoundationModel) else model
    if not hasattr(fm_model, "match_genes"):
        msg = f"{fm_model.name} does not support `align_genes`."
        raise NotImplementedError(msg)
    genes = target.var_names if gene_key is None else target.var[gene_key].astype(str)
    match = fm_model.match_genes(genes, gene_id_type=gene_id_type)
    key = key_added or fm_model.family
    has = match.column >= 0
    tokens = np.full(target.n_vars, -1, np.int64)
    tokens[has] = match.token_ids[match.column[has]]
    target.var[f"{key}_id"] = [e if (e is not None and h) else "" for e, h in zip(match.ensembl, has, strict=True)]
    target.var[f"{key}_token"] = tokens
    stats = {
        "n_vars": int(target.n_vars),
        "n_vars_matched": int(has.sum()),
        "n_genes_matched": len(match.token_ids),
        "frac_vars_matched": float(has.mean()) if target.n_vars else 0.0,
        "gene_id_type": match.id_type,
    }
    target.uns[f"{key}_genes"] = stats
    logger.info("%s: %d/%d genes matched", fm_model.name, stats["n_vars_matched"], stats["n_vars"])
    return data if copy else None
