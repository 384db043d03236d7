"""Blockwise (dask) runs of the model tools: tokens, cell embeddings and contextual gene embeddings, row block by block.

Each block of cells is one dask task on the active ``dask.distributed`` client (dask's default scheduler without
one). A task carries a :class:`~scfmkit._dask.ModelRef`, never the model: every worker process loads the model once
and keeps it (:func:`scfmkit._dask.cached_model`). A task runs the model's own code on its block (the same
tokeniser and forward pass as the in-memory path), so tokens are identical and embeddings agree to float rounding
whatever the block size or the number of workers. Per-cell results are concatenated (or written block by block into
a zarr :class:`~scfmkit._dask.BlockStore`, resumable); the run-level numbers (gene coverage, counts of cells) are
reduced from per-block sums, and the contextual gene embeddings from per-block sums and counts.

Below ``pp`` and ``tl`` (both call it; it imports neither): the wrappers ``fm.pp.tokenize``, ``fm.tl.embed`` and
``fm.tl.embed_genes`` dispatch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from . import _dask
from ._checks import get_matrix, var_names
from ._dask import is_dask
from ._random import as_seed
from ._utils import logger, sanitize_params

if TYPE_CHECKING:
    from anndata import AnnData

    from .models import FoundationModel, TokenizedCells

__all__ = ["embed_blockwise", "is_dask", "embed_genes_blockwise", "tokenize_blockwise", "wants_blockwise"]

#: per family: the per-block numbers the run-level parameters are reduced from
_STATS = {"geneformer": ("total", "matched"), "scgpt": ("n_cells_subsampled", "n_cells_without_genes")}
#: options that do not change the numbers beyond float rounding (not part of a store's identity)
_NOT_IDENTITY = {"device", "batch_size", "chunk_size"}
#: parameters reduced from the blocks (not known before the run)
_VOLATILE = {"frac_counts_matched", "n_cells_subsampled", "n_cells_without_genes"}


def wants_blockwise(adata: AnnData, layer: str | None, *, block_size: int | None, store: Any = None) -> bool:
    """Whether a tool call runs blockwise: a dask matrix, or ``block_size``/``store`` given."""
    return store is not None or block_size is not None or _dask.is_dask(get_matrix(adata, layer))


# ----------------------------------------------------------------------------------------------------- inputs


class _Input:
    """The cells of one call as row blocks, with the small per-block obs and the var table every task gets."""

    def __init__(self, adata: AnnData, layer: str | None, gene_key: str | None, block_size: int | None):
        X = get_matrix(adata, layer)
        element = "X" if layer is None else f"layers/{layer}"
        filename = adata.filename if getattr(adata, "isbacked", False) else None
        self.X, self.block_size = _dask.as_row_blocks(X, block_size, filename=filename, element=element)
        if self.X.shape != (adata.n_obs, adata.n_vars):
            msg = f"The matrix is {self.X.shape} but adata is {adata.n_obs} x {adata.n_vars}."
            raise ValueError(msg)
        self.n_obs, self.n_vars = adata.n_obs, adata.n_vars
        self.bounds = _dask.block_bounds(adata.n_obs, self.block_size)
        self.obs_names = pd.Index(np.asarray(adata.obs_names).astype(str))
        self.var = pd.DataFrame(index=pd.Index(np.asarray(adata.var_names).astype(str)))
        if gene_key is not None:
            self.var[gene_key] = var_names(adata, gene_key).to_numpy()
        self.n_counts = None
        if "n_counts" in adata.obs:
            self.n_counts = np.asarray(adata.obs["n_counts"])  # its own dtype: the tokeniser divides by it as it is
        self.dtype = X.dtype

    def obs(self, i: int) -> pd.DataFrame:
        start, stop = self.bounds[i]
        obs = pd.DataFrame(index=self.obs_names[start:stop])
        if self.n_counts is not None:
            obs["n_counts"] = self.n_counts[start:stop]
        return obs

    def empty(self) -> AnnData:
        """No cells, all genes: runs a model's own checks and parameter bookkeeping without any forward pass."""
        import anndata as ad

        obs = pd.DataFrame(index=pd.Index([], dtype=str))
        if self.n_counts is not None:
            obs["n_counts"] = np.zeros(0, dtype=self.n_counts.dtype)
        return ad.AnnData(X=sparse.csr_matrix((0, self.n_vars), dtype=self.dtype), obs=obs, var=self.var.copy())

    def blocks(self) -> list[Any]:
        return list(self.X.to_delayed().ravel())

    def layout(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "n_blocks": len(self.bounds), "n_obs": self.n_obs}

    def identity(self) -> dict[str, Any]:
        return {
            "n_obs": self.n_obs,
            "n_vars": self.n_vars,
            "block_size": self.block_size,
            "obs_names_sha256": _dask.fingerprint_of(self.obs_names),
            "var_sha256": _dask.fingerprint_of([*self.var.index, *np.ravel(self.var.to_numpy()).astype(str)]),
        }


def _block_adata(X: Any, obs: pd.DataFrame, var: pd.DataFrame) -> AnnData:
    import anndata as ad

    if not (sparse.issparse(X) or isinstance(X, np.ndarray)):
        X = np.asarray(X)
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
    return ad.AnnData(X=X, obs=obs, var=var)


def _options(model: FoundationModel, options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    if "rng" in options or model.family == "scgpt":  # one seed for every block (None = fresh entropy, drawn once)
        options["rng"] = as_seed(options.get("rng", 0))
    return options


def _check_fail(index: int, fail_blocks: frozenset[int]) -> None:
    if index in fail_blocks:  # test hook: a task that dies, as on a crash or a pre-emption
        msg = f"block {index} failed on purpose (test hook)"
        raise RuntimeError(msg)


# ----------------------------------------------------------------------------------------------------- task bodies


def _geneformer_match(model: FoundationModel, blk: AnnData, opts: dict[str, Any]):
    """The block's gene match, with the options that define it taken out of ``opts`` (``duplicates`` included)."""
    return model.match_adata(
        blk,
        gene_key=opts.pop("gene_key", None),
        gene_id_type=opts.pop("gene_id_type", "auto"),
        duplicates=opts.pop("duplicates", "reference"),
    )


def _cells_kernel(model: FoundationModel, blk: AnnData, options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of one block and its per-block stats (:data:`_STATS`)."""
    if model.family == "geneformer":
        opts = dict(options)
        match = _geneformer_match(model, blk, opts)
        emb = np.empty((blk.n_obs, model.hidden_size), np.float32)
        total = matched = 0.0
        chunks = model.iter_tokenize(blk, input=opts.pop("input", "counts"), chunk_size=max(blk.n_obs, 1), match=match)
        opts.pop("chunk_size", None)
        for rows, tokens, stats in chunks:
            emb[rows] = model.embed_tokens(tokens, show_progress=False, **opts)
            total += stats["total"]
            matched += stats["matched"]
        return emb, np.array([total, matched])
    emb, params = model.embed_cells(blk, **options)
    return emb, np.array([params[k] for k in _STATS.get(model.family, ())], dtype=np.float64)


def _cells_task(ref, X, obs, var, options, index, start, store, key, fail_blocks):
    model, lock = _dask.cached_model(ref)
    blk = _block_adata(X, obs, var)
    _check_fail(index, fail_blocks)
    with lock:
        emb, stats = _cells_kernel(model, blk, options)
    if not np.isfinite(emb).all():
        bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
        msg = (
            f"{model.name} produced NaN or infinite cell embeddings for {len(bad)} rows of block {index} (e.g. row "
            f"{start + int(bad[0])}); the block was not stored. The weights ({model.weights_id}) are probably "
            "corrupted or were trained in another precision: reload them, or try `precision='float32'`."
        )
        raise ValueError(msg)
    if store is None:
        return emb, stats
    _dask.write_block(store, key, index, start, emb, stats)
    return None, stats


def _gene_sums_kernel(model: FoundationModel, blk: AnnData, options: dict[str, Any]):
    """``(sums, counts, stats)`` of one block: float64 sums of the gene states and how often each gene occurred."""
    if model.family == "geneformer":
        opts = dict(options)
        match = _geneformer_match(model, blk, opts)
        vocab = model.config.vocab_size
        sums, counts = np.zeros((vocab, model.hidden_size), np.float64), np.zeros(vocab, np.int64)
        opts.pop("chunk_size", None)
        for _, tokens, _ in model.iter_tokenize(
            blk, input=opts.pop("input", "counts"), chunk_size=max(blk.n_obs, 1), match=match
        ):
            model.embed_tokens(tokens, gene_sums=(sums, counts), show_progress=False, **opts)
        return sums[match.token_ids], counts[match.token_ids].astype(np.float64), np.zeros(0)
    if model.family == "scgpt":
        import torch

        opts = dict(options)
        prep = model._prepare(
            blk,
            layer=None,
            gene_key=opts.get("gene_key"),
            max_length=opts.get("max_length"),
            rng=opts.get("rng", 0),
            chunk_size=opts.get("chunk_size", 16_384),
        )
        d = model.hidden_size
        sums = torch.zeros((blk.n_vars, d), dtype=torch.float64)
        counts = torch.zeros(blk.n_vars, dtype=torch.float64)

        def consume(_idx, columns, hidden, lengths):  # as ScGPTModel.embed_genes
            hidden = hidden.cpu()
            for j, c in enumerate(columns):
                cols = torch.from_numpy(c)
                sums.index_add_(0, cols, hidden[j, 1 : int(lengths[j])].double())
                counts.index_add_(0, cols, torch.ones(cols.numel(), dtype=torch.float64))

        model._run(
            prep,
            batch_size=opts.get("batch_size"),
            device=opts.get("device"),
            precision=opts.get("precision", "float32"),
            cls_only=False,
            desc="scGPT genes",
            consume=consume,
        )
        stats = np.array([prep["params"][k] for k in _STATS["scgpt"]], dtype=np.float64)
        return sums.numpy(), counts.numpy(), stats
    msg = f"Blockwise contextual gene embeddings are not implemented for the {model.family!r} family."
    raise NotImplementedError(msg)


def _genes_task(ref, X, obs, var, options, index, fail_blocks):
    model, lock = _dask.cached_model(ref)
    blk = _block_adata(X, obs, var)
    _check_fail(index, fail_blocks)
    with lock:
        return _gene_sums_kernel(model, blk, options)


def _add(a, b):
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def _tokens_task(ref, X, obs, var, options, index, fail_blocks):
    model, lock = _dask.cached_model(ref)
    blk = _block_adata(X, obs, var)
    _check_fail(index, fail_blocks)
    if model.family == "geneformer":
        opts = dict(options)
        match = _geneformer_match(model, blk, opts)
        opts.pop("chunk_size", None)
        parts, total, matched = [], 0.0, 0.0
        for _, tokens, stats in model.iter_tokenize(blk, chunk_size=max(blk.n_obs, 1), match=match, **opts):
            parts.append(tokens)
            total += stats["total"]
            matched += stats["matched"]
        from .models import TokenizedCells

        return TokenizedCells.concatenate(parts), np.array([total, matched])
    tokens, params = model.tokenize(blk, **options)
    return tokens, np.array([params[k] for k in _STATS.get(model.family, ())], dtype=np.float64)


# ----------------------------------------------------------------------------------------------------- reductions


def _finish(model: FoundationModel, template: dict[str, Any], stats: np.ndarray) -> dict[str, Any]:
    """The run's parameters: the model's own (from a call on no cells) with the per-block sums put in."""
    params = dict(template)
    names = _STATS.get(model.family, ())
    total = dict(zip(names, stats.sum(axis=0) if len(stats) else np.zeros(len(names)), strict=True))
    if model.family == "geneformer":
        params["frac_counts_matched"] = float(total["matched"] / total["total"]) if total["total"] > 0 else float("nan")
    else:
        params.update({k: int(v) for k, v in total.items()})
    return params


def _template(params: dict[str, Any], layer: str | None) -> dict[str, Any]:
    params = dict(params)
    if "layer" in params:
        params["layer"] = layer
    return params


def _ref(model: FoundationModel):
    _dask.prime_model(model)  # dask's threaded scheduler (no client) reuses the loaded model
    return _dask.ModelRef.of(model)


def _scheduler_name() -> str:
    client = _dask.active_client()
    return "dask-default" if client is None else f"distributed:{client.scheduler.address}"


def embed_blockwise(
    adata: AnnData,
    model: FoundationModel,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    block_size: int | None = None,
    store: str | Path | None = None,
    key: str = "X_emb",
    _fail_blocks: frozenset[int] = frozenset(),
    **options: Any,
) -> tuple[Any, dict[str, Any]]:
    """Cell embeddings of ``adata`` block by block; returns ``(embeddings, params)``.

    Without ``store`` the blocks are gathered into one float32 numpy array. With ``store`` (a zarr path) each task
    writes its block there, a rerun skips the finished blocks, and the result is a dask array reading the store.
    ``params`` are the model's own (as :meth:`~scfmkit.models.FoundationModel.embed_cells` records them) plus
    ``blocks`` (block size, number of blocks, store, scheduler).
    """
    import dask

    inp = _Input(adata, layer, gene_key, block_size)
    options = _options(model, {"gene_key": gene_key, **options})
    template = _template(model.embed_cells(inp.empty(), **options)[1], layer)  # the model's checks, no cells
    ref = _ref(model)
    names = _STATS.get(model.family, ())
    n = len(inp.bounds)
    done = np.zeros(n, bool)
    bs = None
    if store is not None:
        identity = {
            "model": model.name,
            "weights": model.weights_id,
            "family": model.family,
            "key": key,
            "layer": layer,
            "params": sanitize_params(
                {k: v for k, v in template.items() if k not in _NOT_IDENTITY and k not in _VOLATILE}
            ),
            # the gene-match options change the tokens but are not all recorded in the model's params
            "match": sanitize_params(
                {k: options[k] for k in ("gene_key", "gene_id_type", "duplicates") if options.get(k) is not None}
            ),
            **inp.identity(),
        }
        bs = _dask.BlockStore(store, key, identity, shape=(inp.n_obs, model.hidden_size), n_stats=len(names))
        done = bs.finished()
        if done.any():
            logger.info(
                "store %s: %d of %d blocks already finished; computing the other %d",
                store,
                done.sum(),
                n,
                n - done.sum(),
            )
    var = dask.delayed(inp.var, pure=True)
    blocks = inp.blocks()
    todo = [i for i in range(n) if not done[i]]
    tasks = [
        dask.delayed(_cells_task, pure=False)(
            ref,
            blocks[i],
            inp.obs(i),
            var,
            options,
            i,
            inp.bounds[i][0],
            None if bs is None else str(store),
            key,
            _fail_blocks,
        )
        for i in todo
    ]
    results = _dask.run_tasks(tasks, desc=f"{model.name} blocks")
    if bs is None:
        emb = np.concatenate([r[0] for r in results]) if results else np.zeros((0, model.hidden_size), np.float32)
        stats = np.stack([r[1] for r in results]) if results else np.zeros((0, len(names)))
    else:
        emb = bs.array()
        stats = bs.stats()[:, : len(names)]
    params = _finish(model, template, stats)
    model.log_coverage(params)
    params["blocks"] = {**inp.layout(), "store": None if store is None else str(store), "scheduler": _scheduler_name()}
    if bs is not None:
        bs.set_params(sanitize_params(params))
    return emb, params


def embed_genes_blockwise(
    adata: AnnData,
    model: FoundationModel,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    block_size: int | None = None,
    _fail_blocks: frozenset[int] = frozenset(),
    **options: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Contextual gene embeddings block by block: per-block float64 sums and counts, reduced in a tree, then divided."""
    import dask

    inp = _Input(adata, layer, gene_key, block_size)
    options = _options(model, {"gene_key": gene_key, **options})
    template = _template(model.embed_genes(inp.empty(), kind="contextual", **options)[1], layer)
    ref = _ref(model)
    var = dask.delayed(inp.var, pure=True)
    blocks = inp.blocks()
    parts = [
        dask.delayed(_genes_task, pure=False)(ref, blocks[i], inp.obs(i), var, options, i, _fail_blocks)
        for i in range(len(inp.bounds))
    ]
    while len(parts) > 1:  # pairwise tree: the client never holds more than one partial sum
        parts = [
            dask.delayed(_add)(*parts[i : i + 2]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)
        ]
    sums, counts, stats = _dask.run_tasks(parts, desc=f"{model.name} gene blocks")[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (sums / counts[:, None]).astype(np.float32)
    params = dict(template)
    if model.family == "geneformer":
        match = _geneformer_match(model, inp.empty(), dict(options))  # the same match every block's task makes
        out = np.full((inp.n_vars, model.hidden_size), np.nan, np.float32)
        has = match.column >= 0
        out[has] = mean[match.column[has]]
        params["n_genes_seen"] = int((counts > 0).sum())
    else:
        out = mean
        params["n_genes_embedded"] = int((counts > 0).sum())
        params.update({k: int(v) for k, v in zip(_STATS.get(model.family, ()), stats, strict=True)})
    params["blocks"] = {**inp.layout(), "store": None, "scheduler": _scheduler_name()}
    return out, params


def tokenize_blockwise(
    adata: AnnData,
    model: FoundationModel,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    block_size: int | None = None,
    _fail_blocks: frozenset[int] = frozenset(),
    **options: Any,
) -> tuple[TokenizedCells, dict[str, Any]]:
    """Tokens of every cell block by block (identical to :meth:`~scfmkit.models.FoundationModel.tokenize`)."""
    import dask

    from .models import TokenizedCells

    inp = _Input(adata, layer, gene_key, block_size)
    options = _options(model, {"gene_key": gene_key, **options})
    template = _template(model.tokenize(inp.empty(), **options)[1], layer)
    ref = _ref(model)
    var = dask.delayed(inp.var, pure=True)
    blocks = inp.blocks()
    tasks = [
        dask.delayed(_tokens_task, pure=False)(ref, blocks[i], inp.obs(i), var, options, i, _fail_blocks)
        for i in range(len(inp.bounds))
    ]
    results = _dask.run_tasks(tasks, desc=f"{model.name} token blocks")
    tokens = TokenizedCells.concatenate([r[0] for r in results])
    stats = np.stack([r[1] for r in results]) if results else np.zeros((0, len(_STATS.get(model.family, ()))))
    params = _finish(model, template, stats)
    model.log_coverage(params)
    return tokens, params
