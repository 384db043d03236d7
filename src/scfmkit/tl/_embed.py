"""``fm.tl.embed`` and ``fm.tl.embed_genes``: foundation-model embeddings written into AnnData/MuData."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _blockwise, models
from .._utils import check_free_keys, get_modality, logger, sanitize_params, write_back

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["embed", "embed_genes"]


def embed(
    adata: AnnData | MuData,
    model: str | Path | models.FoundationModel = "geneformer-v1",
    *,
    weights: str = "pretrained",
    layer: str | None = None,
    gene_key: str | None = None,
    emb_layer: int | None = None,
    pooling: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    precision: str = "float32",
    mod: str | None = "rna",
    key_added: str | None = None,
    block_size: int | None = None,
    store: str | Path | None = None,
    copy: bool = False,
    **model_options: Any,
) -> AnnData | MuData | None:
    """Embed cells with a single-cell foundation model.

    Parameters
    ----------
    adata
        Cells x genes. A MuData is read and written in modality ``mod``.
    model
        Registry name (``"geneformer-v1"``, ``"geneformer-v2"``, ``"scgpt-human"``; see
        :func:`scfmkit.models.available_models`), a local checkpoint directory, or a loaded model.
    weights
        ``"pretrained"`` or ``"random"`` (same architecture and vocabulary, seeded random weights: the
        foundationless control).
    layer
        Layer holding the values (default ``adata.X``). Geneformer needs raw counts (or log1p-normalised values with
        ``input="lognorm"``); scGPT accepts any per-cell monotone transform of counts.
    gene_key
        ``var`` column with gene ids/symbols (default ``var_names``).
    emb_layer
        Which hidden layer (model default if ``None``). Geneformer counts like its reference: ``-1`` is the
        second-to-last layer, ``0`` the last.
    pooling
        ``"mean"`` (Geneformer default, non-padding gene tokens only) or ``"cls"`` (Geneformer V2, scGPT).
    batch_size
        Cells per forward pass (default :attr:`scfmkit.settings.batch_size`).
    device
        Torch device (default :attr:`scfmkit.settings.device`).
    precision
        ``"float32"`` (default), ``"bfloat16"`` or ``"float16"`` autocast. ``"bfloat16"`` is faster on a GPU and on
        CPUs with bf16 units (``amx_bf16``/``avx512_bf16`` in ``/proc/cpuinfo``), slower on CPUs without them; the
        embeddings differ from float32 slightly (``benchmarks/README.md`` has measured speed-ups and cosines).
    mod
        Modality of a MuData to use.
    key_added
        ``obsm`` key (default ``"X_<family>"``, e.g. ``"X_geneformer"``); the ``uns`` key is the same without
        ``X_``. Keys holding another tool's results (scanpy's ``X_pca``/``pca``) are refused, never overwritten.
    block_size
        Cells per dask task. A dask ``X`` (e.g. from :func:`anndata.experimental.read_lazy`), ``block_size`` or
        ``store`` run the model blockwise on the active ``dask.distributed`` client (dask's default scheduler
        without one), each worker loading the model once; see :doc:`/atlas_scale`. Default: the dask row chunks.
    store
        A zarr path the blocks are written into as they finish; ``obsm[key]`` is then a dask array reading it. A
        rerun with the same store skips finished blocks (resumable); a store of another model, options, cells or
        block size is refused, nothing overwritten.
    copy
        Return a modified copy instead of writing into ``adata``.
    **model_options
        Options of the model (e.g. ``input="lognorm"`` for Geneformer, ``max_length``/``rng`` for scGPT).

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Writes

    - ``obsm['X_<family>']``: float32 cells x dims, in input order;
    - ``uns['<family>']['params']``: model name, source, weights (``sha256:...`` or ``random:<seed>``), options,
      gene coverage and the scfmkit version; blockwise runs add ``blocks`` (``block_size``, ``n_blocks``, ``n_obs``,
      ``store``, ``scheduler``). With ``store`` the embedding is a dask array reading the store.

    For a MuData the embedding is also stored as ``mdata.obsm['<mod>:X_<family>']``.
    """
    fm_model = models.load(model, weights=weights, device=device)
    key = key_added or f"X_{fm_model.family}"
    uns_key = key[2:] if key.startswith("X_") else key
    check_free_keys(get_modality(adata, mod), obsm=key, uns=uns_key)
    options = {k: v for k, v in {"emb_layer": emb_layer, "pooling": pooling}.items() if v is not None}
    if _blockwise.wants_blockwise(get_modality(adata, mod), layer, block_size=block_size, store=store):
        emb, params = _blockwise.embed_blockwise(
            get_modality(adata, mod),
            fm_model,
            layer=layer,
            gene_key=gene_key,
            block_size=block_size,
            store=store,
            key=key,
            batch_size=batch_size,
            device=device,
            precision=precision,
            **options,
            **model_options,
        )
    else:
        emb, params = fm_model.embed_cells(
            get_modality(adata, mod),
            layer=layer,
            gene_key=gene_key,
            batch_size=batch_size,
            device=device,
            precision=precision,
            **options,
            **model_options,
        )
    if not _blockwise.is_dask(emb):  # blockwise runs check each block before it is stored
        _check_finite(emb, fm_model, what="cell embeddings")
    # everything computed: only now write (a failed call leaves the caller's object as it was)
    data = adata.copy() if copy else adata
    target = get_modality(data, mod)
    target.obsm[key] = emb
    target.uns[uns_key] = {"params": sanitize_params({**fm_model.base_params, **params})}
    write_back(data, mod, obsm_keys=[key])
    logger.info("Wrote obsm[%r] (%d x %d) and uns[%r]['params']", key, *emb.shape, uns_key)
    return data if copy else None


def embed_genes(
    adata: AnnData | MuData,
    model: str | Path | models.FoundationModel = "geneformer-v1",
    *,
    kind: str = "contextual",
    weights: str = "pretrained",
    layer: str | None = None,
    gene_key: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    mod: str | None = "rna",
    key_added: str | None = None,
    block_size: int | None = None,
    copy: bool = False,
    **model_options: Any,
) -> AnnData | MuData | None:
    """Gene embeddings from a foundation model, one row per gene of ``adata``.

    Parameters
    ----------
    adata
        Cells x genes (a MuData is used through modality ``mod``).
    model
        As in :func:`embed`.
    kind
        ``"contextual"``: each gene's output embedding averaged over the cells in which it is a token.
        ``"token"``: the model's learned input embedding of each gene (no forward pass; the gene matrix ``G`` that
        :func:`scfmkit.tl.predict_perturbation` can use with ``method="linear"``).
    weights, layer, gene_key, batch_size, device, mod, copy, **model_options
        As in :func:`embed`.
    key_added
        ``varm`` key (default ``"<family>_<kind>"``, e.g. ``"geneformer_contextual"``).
    block_size
        Cells per dask task for ``kind="contextual"``: a dask ``X`` or ``block_size`` run blockwise as in
        :func:`embed`, reducing per-block sums and counts of each gene's states.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Writes ``varm['<family>_<kind>']`` (float32 genes x dims, NaN rows for
    genes the model lacks or that never occur) and ``uns['<family>_<kind>']['params']``.
    """
    if kind not in {"contextual", "token"}:
        msg = f"`kind` must be 'contextual' or 'token', got {kind!r}."
        raise ValueError(msg)
    fm_model = models.load(model, weights=weights, device=device)
    key = key_added or f"{fm_model.family}_{kind}"
    check_free_keys(get_modality(adata, mod), varm=key, uns=key)
    if kind == "contextual" and _blockwise.wants_blockwise(get_modality(adata, mod), layer, block_size=block_size):
        emb, params = _blockwise.embed_genes_blockwise(
            get_modality(adata, mod),
            fm_model,
            layer=layer,
            gene_key=gene_key,
            block_size=block_size,
            batch_size=batch_size,
            device=device,
            **model_options,
        )
    else:
        emb, params = fm_model.embed_genes(
            get_modality(adata, mod),
            kind=kind,
            layer=layer,
            gene_key=gene_key,
            batch_size=batch_size,
            device=device,
            **model_options,
        )
    _check_finite(emb, fm_model, what="gene embeddings")
    data = adata.copy() if copy else adata
    target = get_modality(data, mod)
    target.varm[key] = emb
    target.uns[key] = {"params": sanitize_params({**fm_model.base_params, "kind": kind, **params})}
    return data if copy else None


def _check_finite(emb, fm_model: models.FoundationModel, *, what: str) -> None:
    """Refuse non-finite output (rows that are entirely NaN mark genes the model lacks, by design)."""
    import numpy as np

    finite = np.isfinite(emb)
    by_design = np.isnan(emb).all(axis=1) if what == "gene embeddings" else np.zeros(len(emb), bool)
    bad = ~finite.all(axis=1) & ~by_design
    if bad.any():
        msg = (
            f"{fm_model.name} produced NaN or infinite {what} for {int(bad.sum())} rows (e.g. row "
            f"{int(np.flatnonzero(bad)[0])}); nothing was written. The weights ({fm_model.weights_id}) are probably "
            "corrupted or were trained in another precision: reload them, or try `precision='float32'`."
        )
        raise ValueError(msg)
