"""``fm.pp.tokenize``: a model's tokens for every cell (what ``fm.tl.embed`` feeds the network)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _blockwise, models
from .._utils import get_modality

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from ..models import TokenizedCells

__all__ = ["tokenize"]


def tokenize(
    adata: AnnData | MuData,
    model: str | Path | models.FoundationModel = "geneformer-v1",
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str | None = "rna",
    block_size: int | None = None,
    **options: Any,
) -> tuple[TokenizedCells, dict[str, Any]]:
    """Tokenise cells exactly as the model's reference tokenizer does, without running the model.

    Every model returns the same type, :class:`scfmkit.models.TokenizedCells`. For Geneformer: each cell's genes
    ranked by ``count / total * 10,000 / median`` (descending, zero counts dropped but explicitly stored zeros of a
    sparse matrix ranked last, arithmetic and ties exactly as the reference on the matrix as stored; duplicated gene
    ids as the reference treats them, see ``duplicates``), truncated to the input size, with ``<cls>``/``<eos>`` for
    V2. For scGPT: ``<cls>`` then the cell's
    expressed genes with their per-cell quantile bins. Works on backed AnnData chunk by chunk. ``adata`` is not
    modified.

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
    block_size
        Cells per dask task: a dask ``X`` (:func:`anndata.experimental.read_lazy`) or ``block_size`` tokenise
        blockwise on the active ``dask.distributed`` client; the tokens are identical.
    **options
        Geneformer: ``input``, ``gene_id_type``, ``chunk_size``, ``duplicates`` (``"reference"``: V1 repeats a gene
        whose id occurs twice, V2 sums only when its id mapping merges ids, with a warning; ``"sum"``: always summed;
        see :meth:`scfmkit.models.geneformer.GeneformerModel.match_genes` and ``iter_tokenize``). scGPT:
        ``max_length``, ``rng``, ``chunk_size`` (see :meth:`scfmkit.models.scgpt.ScGPTModel.tokenize`).

    Returns
    -------
    ``(tokens, coverage)``: :class:`~scfmkit.models.TokenizedCells` in input order (``tokens[i]`` are cell ``i``'s
    token ids; scGPT's also carry ``values``, ``columns`` and ``n_genes``) and the gene-coverage statistics.
    """
    target = get_modality(adata, mod)
    fm_model = models.load(model, weights="random")
    if _blockwise.wants_blockwise(target, layer, block_size=block_size):
        return _blockwise.tokenize_blockwise(
            target, fm_model, layer=layer, gene_key=gene_key, block_size=block_size, **options
        )
    return fm_model.tokenize(target, layer=layer, gene_key=gene_key, **options)
