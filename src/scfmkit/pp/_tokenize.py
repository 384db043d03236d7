"""``fm.pp.tokenize``: a model's tokens for every cell (what ``fm.tl.embed`` feeds the network)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import models
from .._utils import get_modality

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from ..models._rank_tokenize import TokenizedCells

__all__ = ["tokenize"]


def tokenize(
    adata: AnnData | MuData,
    model: str | Path | models.FoundationModel = "geneformer-v1",
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str | None = "rna",
    **options: Any,
) -> tuple[TokenizedCells, dict[str, Any]]:
    """Tokenise cells exactly as the model's reference tokenizer does, without running the model.

    For Geneformer: each cell's genes ranked by ``count / total * 10,000 / median`` (descending, zero counts dropped,
    duplicates after id mapping summed), truncated to the input size, with ``<cls>``/``<eos>`` for V2. Works on
    backed AnnData chunk by chunk. ``adata`` is not modified.

    Parameters
    ----------
    adata
        Cells x genes with raw counts (or log1p-normalised values with ``input='lognorm'``).
    model
        Model name, directory or loaded model; only its dictionaries are needed.
    layer
        Layer with the counts (default ``adata.X``).
    gene_key
        ``var`` column with Ensembl ids or symbols (default ``var_names``).
    mod
        Modality of a MuData.
    **options
        ``input``, ``gene_id_type``, ``chunk_size``
        (see :meth:`scfmkit.models.geneformer.GeneformerModel.iter_tokenize`).

    Returns
    -------
    ``(tokens, coverage)``: ragged token ids in input order (``tokens[i]`` is cell ``i``) and gene-coverage statistics.
    """
    target = get_modality(adata, mod)
    fm_model = models.load(model, weights="random") if not isinstance(model, models.FoundationModel) else model
    if not hasattr(fm_model, "tokenize"):
        msg = f"{fm_model.name} does not expose a tokenizer."
        raise NotImplementedError(msg)
    return fm_model.tokenize(target, layer=layer, gene_key=gene_key, **options)
