"""``fm.pp.align_genes``: how the genes of a dataset map onto a model's vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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

    Needs only the model's vocabulary (a named model is loaded with random weights). Works the same for every model
    family. No matching gene at all is an error (with a hint), not an empty result.

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
    - ``uns['<key>_genes']``: ``n_vars``, ``n_vars_matched`` (var entries with a token), ``n_genes_matched``
      (distinct tokens), ``frac_vars_matched``, ``gene_id_type`` (see :meth:`scfmkit.models.GeneMatch.coverage`).
    """
    target = get_modality(adata, mod)
    fm_model = models.load(model, weights="random")
    match = fm_model.match_adata(target, gene_key=gene_key, gene_id_type=gene_id_type)
    if match.n_vars_matched == 0:
        where = "var_names" if gene_key is None else f"var[{gene_key!r}]"
        msg = (
            f"None of the {target.n_vars} genes in {where} (e.g. {list(target.var_names[:3])}) match {fm_model.name}'s "
            f"vocabulary (read as {match.id_type}s). Pass `gene_key=` naming a var column with "
            f"{'Ensembl ids or gene symbols' if fm_model.family == 'geneformer' else 'gene symbols'}."
        )
        if any(g != g.upper() for g in target.var_names[:50].astype(str)):
            msg += " Human gene symbols are upper case (e.g. 'CD3E'); mouse-style names need mapping to human first."
        raise ValueError(msg)
    data = adata.copy() if copy else adata
    target = get_modality(data, mod)
    key = key_added or fm_model.family
    has = match.column >= 0
    target.var[f"{key}_id"] = [g if (g is not None and h) else "" for g, h in zip(match.gene_ids, has, strict=True)]
    target.var[f"{key}_token"] = match.var_tokens
    stats = match.coverage()
    target.uns[f"{key}_genes"] = stats
    logger.info("%s: %d/%d genes matched", fm_model.name, stats["n_vars_matched"], stats["n_vars"])
    return data if copy else None
