"""scGPT (Cui et al. 2024) cell and gene embeddings with scfmkit's own model code.

A checkpoint is a directory in the released layout: ``best_model.pt`` (a state dict; ``model.safetensors`` is also
accepted), ``args.json`` (architecture and preprocessing constants) and ``vocab.json`` (gene symbol -> token id).
The public whole-human weights are distributed on Google Drive by the scGPT authors (folder ``scGPT_human``);
download it and pass the folder, or put it at ``$SCFMKIT_MODELS_DIR/scgpt-human``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from scfmkit._settings import settings
from scfmkit._utils import check_nonnegative_finite, get_matrix, get_modality, logger, progress, sanitize_params

from ._base import FoundationModel, ModelSpec, register_model

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from ._scgpt_model import ScGPTEncoder

__all__ = ["ScGPTModel", "bin_scgpt", "load_scgpt", "write_random_checkpoint"]

NAME = "scgpt-human"
PAD_TOKEN = "<pad>"
CLS_TOKEN = "<cls>"
SPECIAL_TOKENS = (PAD_TOKEN, CLS_TOKEN, "<eoc>")
WEIGHT_FILES = ("best_model.pt", "model.safetensors")
_PRECISIONS = {"float32": None, "bfloat16": "bfloat16", "float16": "float16"}


def _read_vocab(path: Path) -> dict[str, int]:
    with open(path) as f:
        vocab = json.load(f)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        msg = f"{path} is not an scGPT vocabulary (a JSON object mapping gene symbols to integer ids)."
        raise ValueError(msg)
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        msg = f"{path}: token ids must be 0..{len(ids) - 1} without gaps or repeats."
        raise ValueError(msg)
    # the reference appends missing special tokens at the end
    for tok in SPECIAL_TOKENS:
        if tok not in vocab:
            vocab[tok] = len(vocab)
    return vocab


def _read_args(path: Path) -> dict[str, Any]:
    with open(path) as f:
        args = json.load(f)
    if not isinstance(args, dict):
        msg = f"{path} is not an scGPT args.json (a JSON object)."
        raise ValueError(msg)
    return args


class ScGPTModel(FoundationModel):
    """A loaded scGPT model: preprocessing constants, vocabulary and the transformer encoder.

    Use it through :func:`scfmkit.tl.embed` / :func:`scfmkit.tl.embed_genes` or
    :func:`scfmkit.models.load` (``"scgpt-human"`` or a checkpoint directory).

    Attributes
    ----------
    vocab
        Gene symbol -> token id (with ``<pad>``, ``<cls>``, ``<eoc>``).
    args
        The checkpoint's ``args.json``.
    module
        The :class:`torch.nn.Module` computing the encoder (inference only).
    """

    family = "scgpt"

    def __init__(
        self,
        module: ScGPTEncoder,
        *,
        vocab: dict[str, int],
        args: dict[str, Any],
        name: str,
        weights_id: str,
        source: str,
        device: str | None = None,
    ) -> None:
        self.module = module.eval()
        self.vocab = vocab
        self.args = args
        self.name = name
        self.weights_id = weights_id
        self.source = source
        self.pad_id = int(vocab[PAD_TOKEN])
        self.cls_id = int(vocab[CLS_TOKEN])
        self.pad_value = float(args.get("pad_value", -2))
        self.n_bins = int(args.get("n_bins", 51))
        self.max_length = int(args.get("max_seq_len", 1200))
        self.device = settings.resolve_device(device)
        self.module.to(self.device)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def __repr__(self) -> str:
        c = self.module.cfg
        return (
            f"ScGPTModel(name={self.name!r}, weights={self.weights_id[:20]!r}, layers={c.nlayers}, "
            f"d_model={c.d_model}, vocab={c.ntoken}, device={self.device!r})"
        )

    # ------------------------------------------------------------------ genes and tokens

    def match_genes(self, adata: AnnData, *, gene_key: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Vocabulary id of every gene of ``adata`` (``-1`` if absent), matched by symbol, and the coverage."""
        if gene_key is None:
            names = adata.var_names.astype(str)
        elif gene_key in adata.var:
            names = adata.var[gene_key].astype(str)
        else:
            msg = f"`gene_key={gene_key!r}` is not a column of adata.var (columns: {list(adata.var.columns)})."
            raise KeyError(msg)
        specials = set(SPECIAL_TOKENS)
        ids = np.array([-1 if n in specials else self.vocab.get(n, -1) for n in names], dtype=np.int64)
        n_matched = int((ids >= 0).sum())
        coverage = {
            "n_genes_matched": n_matched,
            "n_genes_input": int(ids.size),
            "gene_coverage": float(n_matched / max(ids.size, 1)),
        }
        where = "var_names" if gene_key is None else f"var[{gene_key!r}]"
        if n_matched == 0:
            example = list(names[:3])
            msg = (
                f"None of the {ids.size} genes in {where} (e.g. {example}) is in the scGPT vocabulary, which uses "
                "HGNC gene symbols (e.g. 'CD3E'). Pass `gene_key=` naming a var column with gene symbols."
            )
            raise ValueError(msg)
        logger.info("scGPT: %d/%d genes of %s are in the vocabulary.", n_matched, ids.size, where)
        if coverage["gene_coverage"] < 0.5:
            logger.warning(
                "scGPT: only %d of %d genes (%.0f%%) matched the vocabulary by symbol; check `gene_key`.",
                n_matched,
                ids.size,
                100 * coverage["gene_coverage"],
            )
        return ids, coverage

    def _prepare(
        self,
        adata: AnnData,
        *,
        layer: str | None,
        gene_key: str | None,
        max_length: int | None,
        rng: int | np.random.Generator | None,
        chunk_size: int = 16_384,
    ) -> dict[str, Any]:
        """Check the values, match genes and count each cell's genes; tokens are made later, batch by batch.

        An in-memory matrix is reduced to the matched genes once; a backed one (``backed="r"``) is read again in
        chunks of ``chunk_size`` cells whenever its values are needed, so memory stays bounded.
        """
        max_length = int(max_length or self.max_length)
        if max_length < 2:
            msg = f"`max_length` must be at least 2 (<cls> plus one gene), got {max_length}."
            raise ValueError(msg)
        if chunk_size < 1:
            msg = f"`chunk_size` must be positive, got {chunk_size}."
            raise ValueError(msg)
        X = get_matrix(adata, layer)
        what = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        ids, coverage = self.match_genes(adata, gene_key=gene_key)
        cols = np.flatnonzero(ids >= 0)
        if sparse.issparse(X) or isinstance(X, np.ndarray):
            check_nonnegative_finite(X, what=what)
            sub, source = _matched(X, cols), None
            n_genes = _positive_per_row(sub)
        else:  # backed: count genes chunk by chunk, keep only the handle
            sub, source = None, X
            n_genes = np.zeros(adata.n_obs, np.int64)
            for start in range(0, adata.n_obs, chunk_size):
                block = X[start : start + chunk_size]
                check_nonnegative_finite(block, what=f"{what} (rows from {start})")
                n_genes[start : start + chunk_size] = _positive_per_row(_matched(block, cols))
        base_seed = _base_seed(rng)
        if not adata.obs_names.is_unique:
            logger.warning("scGPT: obs_names are not unique; cells with the same name share random draws.")
        n_empty = int((n_genes == 0).sum())
        if n_empty:
            logger.warning(
                "scGPT: %d cells express none of the matched genes; they get the <cls>-only embedding.", n_empty
            )
        params = {
            **coverage,
            "max_length": max_length,
            "n_bins": self.n_bins,
            "pad_value": self.pad_value,
            "rng_seed": base_seed,
            "n_cells_subsampled": int((n_genes + 1 > max_length).sum()),
            "n_cells_without_genes": n_empty,
            "layer": layer,
            "gene_key": gene_key,
        }
        return {
            "X": sub,
            "source": source,
            "chunk_size": chunk_size,
            "cols": cols,
            "gene_ids": ids,
            "names": np.asarray(adata.obs_names),
            "n_genes": n_genes,
            "lengths": np.minimum(n_genes + 1, max_length),
            "base_seed": base_seed,
            "max_length": max_length,
            "params": params,
        }

    def _blocks(self, prep: dict[str, Any]):
        """Yield ``(rows, matched)``: positions of cells and their values on the matched genes (CSR, sorted).

        All cells at once when the matrix is in memory; chunks of ``chunk_size`` cells read from a backed matrix.
        """
        n = prep["n_genes"].size
        if prep["source"] is None:
            yield np.arange(n), prep["X"]
            return
        step = prep["chunk_size"]
        for start in range(0, n, step):
            yield np.arange(start, min(start + step, n)), _matched(prep["source"][start : start + step], prep["cols"])

    def _tokenize_rows(self, prep: dict[str, Any], block: sparse.csr_matrix, rows: np.ndarray, local: np.ndarray):
        """Tokens of the cells ``local`` of ``block`` (whose cells are ``rows`` of the data)."""
        from ._scgpt_preprocess import cell_generators, tokenize_cells

        tokens, values, columns, _ = tokenize_cells(
            block[local],
            prep["gene_ids"][prep["cols"]],
            cls_id=self.cls_id,
            pad_value=self.pad_value,
            n_bins=self.n_bins,
            max_length=prep["max_length"],
            rngs=cell_generators(prep["base_seed"], list(prep["names"][rows[local]])),
        )
        return tokens, values, [prep["cols"][c] for c in columns]  # columns back to adata.var positions

    def tokenize(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        max_length: int | None = None,
        rng: int | np.random.Generator | None = 0,
        chunk_size: int = 16_384,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Compute scGPT's input for every cell of ``adata`` (reference preprocessing, deterministic).

        Genes are matched to the vocabulary by symbol; each cell's non-zero values are binned into
        ``n_bins - 1`` quantile bins of that cell (``1 .. n_bins - 1``); ``<cls>`` comes first with ``pad_value``;
        a cell with more than ``max_length - 1`` genes keeps a random subset. The random numbers (bin tie-breaks,
        subsets) of a cell come from a generator seeded by ``(rng, obs_name)``, so they do not depend on the batch,
        the cell order or on which other cells are in ``adata``. Bins depend only on each cell's ranks: raw counts,
        normalised counts and ``log1p`` give the same input. A backed AnnData is read ``chunk_size`` cells at a time.

        Returns
        -------
        ``(cells, params)`` (the contract of :func:`scfmkit.pp.tokenize`): ``cells`` holds ``tokens``, ``values``
        and ``columns`` (per-cell arrays in input order: token ids, input values, ``adata.var`` positions of the
        genes used), ``n_genes`` (non-zero matched genes per cell) and ``gene_ids`` (vocabulary id per var, ``-1``
        if absent); ``params`` the gene coverage and preprocessing parameters.
        """
        prep = self._prepare(
            adata, layer=layer, gene_key=gene_key, max_length=max_length, rng=rng, chunk_size=chunk_size
        )
        tokens, values, columns = [], [], []
        for rows, block in self._blocks(prep):
            t, v, c = self._tokenize_rows(prep, block, rows, np.arange(rows.size))
            tokens += t
            values += v
            columns += c
        cells = {
            "tokens": tokens,
            "values": values,
            "columns": columns,
            "n_genes": prep["n_genes"],
            "gene_ids": prep["gene_ids"],
        }
        return cells, prep["params"]

    # ------------------------------------------------------------------ forward passes

    def _batches(self, prep: dict[str, Any], batch_size: int):
        """Yield ``(cell_positions, columns, tokens, values, lengths)`` for batches of cells of similar length.

        Cells (of a block, see :meth:`_blocks`) are sorted by length, so a batch is padded only to its longest cell;
        tokens are made batch by batch.
        """
        for rows, block in self._blocks(prep):
            order = np.argsort(prep["lengths"][rows], kind="stable")
            for start in range(0, order.size, batch_size):
                local = order[start : start + batch_size]
                yield self._batch(prep, block, rows, local)

    def _batch(self, prep: dict[str, Any], block: sparse.csr_matrix, rows: np.ndarray, local: np.ndarray):
        """One padded batch: ``(cell_positions, columns, tokens, values, lengths)``."""
        import torch

        tokens, values, columns = self._tokenize_rows(prep, block, rows, local)
        lengths = np.array([t.size for t in tokens], dtype=np.int64)
        n = int(lengths.max())
        tok = np.full((local.size, n), self.pad_id, dtype=np.int64)
        val = np.full((local.size, n), self.pad_value, dtype=np.float32)
        for j, (t, v) in enumerate(zip(tokens, values, strict=True)):
            tok[j, : t.size] = t
            val[j, : v.size] = v
        return rows[local], columns, torch.from_numpy(tok), torch.from_numpy(val), torch.from_numpy(lengths)

    def _run(
        self,
        prep: dict[str, Any],
        *,
        batch_size: int,
        device: str | None,
        precision: str,
        cls_only: bool,
        desc: str,
        consume,
    ) -> str:
        import torch

        if precision not in _PRECISIONS:
            msg = f"`precision` must be one of {list(_PRECISIONS)}, got {precision!r}."
            raise ValueError(msg)
        if batch_size < 1:
            msg = f"`batch_size` must be positive, got {batch_size}."
            raise ValueError(msg)
        dev = settings.resolve_device(device or self.device)
        if dev != self.device:
            self.module.to(dev)
            self.device = dev
        dtype = getattr(torch, _PRECISIONS[precision]) if _PRECISIONS[precision] else None
        dev_type = torch.device(dev).type
        n_cells = prep["lengths"].size
        step = n_cells if prep["source"] is None else prep["chunk_size"]
        n_batches = sum(-(-min(step, n_cells - s) // batch_size) for s in range(0, n_cells, max(step, 1)))
        batches = self._batches(prep, batch_size)
        with torch.inference_mode(), torch.autocast(dev_type, dtype=dtype, enabled=dtype is not None):
            for idx, columns, t, v, n in progress(batches, total=n_batches, desc=desc, unit="batch"):
                out = self.module(t.to(dev), v.to(dev), n.to(dev), cls_only=cls_only)
                consume(idx, columns, out.float(), n)
        return dev

    def embed_cells(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "float32",
        max_length: int | None = None,
        rng: int | np.random.Generator | None = 0,
        normalize: bool = True,
        pooling: str = "cls",
        emb_layer: int | None = None,
        chunk_size: int = 16_384,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Embed cells: the last layer's ``<cls>`` state, L2-normalised by default (as ``embed_data``).

        Parameters
        ----------
        adata
            Cells x genes with gene symbols in ``var_names`` or ``var[gene_key]``. Values: raw counts or any per-cell
            strictly increasing transform that keeps zeros (normalised, ``log1p``) - all give the same bins.
            Negative or non-finite values are refused.
        layer, gene_key
            Where the values and gene symbols are (default ``adata.X``, ``var_names``).
        batch_size
            Cells per forward pass; cells are sorted by length and batched with cells of similar length.
        device, precision
            Torch device; ``"float32"`` or autocast to ``"bfloat16"``/``"float16"``.
        max_length
            Most tokens per cell including ``<cls>`` (default ``max_seq_len`` of ``args.json``, 1200).
        rng
            Seed (or generator) of the random bin tie-breaks and gene subsets; see :meth:`tokenize`.
        normalize
            Divide each embedding by its L2 norm (the reference does).
        pooling, emb_layer
            Only ``"cls"`` pooling of the last layer is defined for scGPT.
        chunk_size
            Cells read at a time from a backed AnnData (``backed="r"``), so that memory stays bounded; an in-memory
            matrix is processed at once. Results do not depend on it.

        Returns
        -------
        ``(embeddings, params)``: float32 ``(n_obs, d_model)`` in input order and the run's parameters.
        """
        if pooling != "cls":
            msg = f"scGPT cell embeddings use the <cls> token; got pooling={pooling!r}. Pass pooling='cls' or None."
            raise ValueError(msg)
        if emb_layer not in (None, -1):
            msg = f"scGPT cell embeddings come from the last layer; `emb_layer` must be None, got {emb_layer!r}."
            raise ValueError(msg)
        batch_size = int(batch_size or settings.batch_size)
        prep = self._prepare(
            adata, layer=layer, gene_key=gene_key, max_length=max_length, rng=rng, chunk_size=chunk_size
        )
        out = np.zeros((adata.n_obs, self.module.cfg.d_model), dtype=np.float32)

        def consume(idx, _columns, emb, _lengths):
            out[idx] = emb.cpu().numpy()

        dev = self._run(
            prep,
            batch_size=batch_size,
            device=device,
            precision=precision,
            cls_only=True,
            desc="scGPT",
            consume=consume,
        )
        if normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        params = {
            **prep["params"],
            "pooling": "cls",
            "normalize": bool(normalize),
            "precision": precision,
            "batch_size": batch_size,
            "device": dev,
            "order": "input",
        }
        return out, params

    def embed_genes(
        self,
        adata: AnnData,
        *,
        kind: str = "contextual",
        layer: str | None = None,
        gene_key: str | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "float32",
        max_length: int | None = None,
        rng: int | np.random.Generator | None = 0,
        chunk_size: int = 16_384,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Gene embeddings in ``adata.var`` order (NaN rows for genes outside the vocabulary or never expressed).

        ``kind="token"``: the gene encoder's output for each gene token (embedding followed by its LayerNorm, as
        the scGPT GRN tutorial uses); no cells are needed. ``kind="contextual"``: each gene's last-layer state,
        averaged over the cells in which it is an input token (other options as :meth:`embed_cells`).
        """
        import torch

        if kind not in {"contextual", "token"}:
            msg = f"`kind` must be 'contextual' or 'token', got {kind!r}."
            raise ValueError(msg)
        d = self.module.cfg.d_model
        if kind == "token":
            ids, coverage = self.match_genes(adata, gene_key=gene_key)
            out = np.full((adata.n_vars, d), np.nan, dtype=np.float32)
            rows = np.flatnonzero(ids >= 0)
            with torch.inference_mode():
                emb = self.module.encoder(torch.from_numpy(ids[rows]).to(self.device)).float().cpu().numpy()
            out[rows] = emb
            return out, {**coverage, "gene_key": gene_key}
        batch_size = int(batch_size or settings.batch_size)
        prep = self._prepare(
            adata, layer=layer, gene_key=gene_key, max_length=max_length, rng=rng, chunk_size=chunk_size
        )
        sums = torch.zeros((adata.n_vars, d), dtype=torch.float64)
        counts = torch.zeros(adata.n_vars, dtype=torch.float64)

        def consume(_idx, columns, hidden, lengths):
            hidden = hidden.cpu()
            for j, c in enumerate(columns):
                cols = torch.from_numpy(c)
                sums.index_add_(0, cols, hidden[j, 1 : int(lengths[j])].double())
                counts.index_add_(0, cols, torch.ones(cols.numel(), dtype=torch.float64))

        dev = self._run(
            prep,
            batch_size=batch_size,
            device=device,
            precision=precision,
            cls_only=False,
            desc="scGPT genes",
            consume=consume,
        )
        out = (sums / counts[:, None]).numpy().astype(np.float32)  # 0/0 -> NaN for genes never seen
        params = {**prep["params"], "precision": precision, "batch_size": batch_size, "device": dev}
        params["n_genes_embedded"] = int((counts > 0).sum())
        return out, params


def bin_scgpt(
    adata: AnnData | MuData,
    *,
    n_bins: int = 51,
    layer: str | None = None,
    rng: int | np.random.Generator | None = 0,
    mod: str | None = "rna",
    key_added: str = "X_binned",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Bin each cell's values into scGPT's per-cell quantile bins (the reference ``binning``, reproducible).

    Every non-zero value of a cell gets a bin in ``1 .. n_bins - 1`` from the quantiles of that cell's non-zero
    values; zeros stay 0. Values lying on several equal bin edges (ties) are spread over those bins with random
    numbers drawn, per cell, from a generator seeded by ``(rng, obs_name)``, as :func:`scfmkit.tl.embed` does for
    scGPT. (The model bins only the genes in its vocabulary, so these bins are its input values when every gene of
    ``adata`` is in the vocabulary.) Bins depend only on each cell's ranks: raw counts, normalised counts and
    ``log1p`` give the same bins.

    Parameters
    ----------
    adata
        Cells x genes, non-negative and finite (a MuData is used through modality ``mod``).
    n_bins
        ``n_bins`` of the model's ``args.json`` (51 for the released checkpoints).
    layer
        Layer with the values (default ``adata.X``).
    rng
        Seed or generator of the tie-breaking draws.
    mod
        Modality of a MuData.
    key_added
        Layer to write.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Writes ``layers[key_added]`` (CSR float32 bins) and
    ``uns['scgpt_binning']['params']`` (``n_bins``, ``layer``, ``rng_seed``).
    """
    from ._scgpt_preprocess import bin_values, cell_generators

    if n_bins < 3:
        msg = f"`n_bins` must be at least 3, got {n_bins}."
        raise ValueError(msg)
    target = get_modality(adata, mod)
    X = get_matrix(target, layer)
    what = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_nonnegative_finite(X, what=what)
    X = sparse.csr_matrix(X, dtype=np.float32, copy=True)
    X.sort_indices()
    base_seed = _base_seed(rng)
    rngs = cell_generators(base_seed, list(target.obs_names))
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        X.data[lo:hi] = bin_values(X.data[lo:hi], n_bins, rngs[i])
    X.eliminate_zeros()
    data = adata.copy() if copy else adata
    out = get_modality(data, mod)
    out.layers[key_added] = X
    out.uns["scgpt_binning"] = {"params": sanitize_params({"n_bins": n_bins, "layer": layer, "rng_seed": base_seed})}
    return data if copy else None


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------


def _matched(X: Any, cols: np.ndarray) -> sparse.csr_matrix:
    """The columns ``cols`` of ``X`` (sparse or dense) as canonical CSR (repeated entries summed, indices sorted)."""
    sub = X[:, cols]
    sub = sparse.csr_matrix(sub) if sparse.issparse(sub) else sparse.csr_matrix(np.asarray(sub))
    sub.sum_duplicates()
    return sub


def _positive_per_row(X: sparse.csr_matrix) -> np.ndarray:
    """Number of stored values > 0 in each row (explicit zeros do not count)."""
    counts = np.add.reduceat(np.append(X.data > 0, False).astype(np.int64), X.indptr[:-1])
    return np.where(np.diff(X.indptr) > 0, counts, 0).astype(np.int64)


def _base_seed(rng: int | np.random.Generator | None) -> int:
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(2**63 - 1))
    if rng is None:
        return int(np.random.SeedSequence().entropy % (2**63 - 1))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return int(rng)
    msg = f"`rng` must be a non-negative int, a numpy Generator or None, got {rng!r}."
    raise TypeError(msg)


def _find_weights(directory: Path) -> Path:
    for fname in WEIGHT_FILES:
        if (directory / fname).is_file():
            return directory / fname
    msg = (
        f"No weights in {str(directory)!r}: expected one of {list(WEIGHT_FILES)} beside args.json and vocab.json. "
        "Download the scGPT checkpoint folder (e.g. scGPT_human from the scGPT README's Google Drive link), or use "
        "weights='random' for the untrained control."
    )
    raise FileNotFoundError(msg)


def _load_weights(module: ScGPTEncoder, path: Path) -> None:
    from ._io import UnsafeFileError, load_state_dict
    from ._scgpt_model import map_state_dict

    try:
        state = load_state_dict(path)
    except UnsafeFileError:
        raise
    except Exception as err:  # truncated/corrupt files raise many different errors
        msg = (
            f"Could not read the scGPT weights {str(path)!r} ({type(err).__name__}: {err}). The file is probably "
            "truncated or corrupt; download it again."
        )
        raise ValueError(msg) from err
    mapped, missing, unexpected, ignored = map_state_dict(state, module)
    if ignored:
        logger.info(
            "scGPT: %d checkpoint tensors of decoder/MVC/classifier heads are not needed and were skipped.",
            len(ignored),
        )
    if unexpected:
        logger.warning(
            "scGPT: %d unexpected tensors in %s were ignored: %s", len(unexpected), path.name, _short(unexpected)
        )
    if missing:
        msg = (
            f"The scGPT weights {str(path)!r} lack {len(missing)} core tensors ({_short(missing)}); refusing a "
            "partially random model. Check that the file is complete and matches args.json (nlayers, embsize)."
        )
        raise ValueError(msg)
    module.load_state_dict(mapped, strict=True)


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def load_scgpt(
    path: str | Path | None,
    *,
    weights: str = "pretrained",
    seed: int = 0,
    device: str | None = None,
    name: str = NAME,
) -> ScGPTModel:
    """Load an scGPT checkpoint directory (``args.json``, ``vocab.json``, ``best_model.pt``).

    ``weights="random"`` builds the same architecture and vocabulary with seeded random weights (only ``args.json``
    and ``vocab.json`` are read).
    """
    from ._scgpt_model import ScGPTConfig, ScGPTEncoder, build_random

    if path is None:
        msg = (
            f"No local folder for {name!r}. The scGPT weights are not on the HuggingFace hub: download the checkpoint "
            "folder (best_model.pt, args.json, vocab.json; e.g. scGPT_human from the Google Drive link in the scGPT "
            f"README) and pass it as `model='/path/to/dir'` or `path=`, or put it at $SCFMKIT_MODELS_DIR/{name}/. "
            "`weights='random'` also needs args.json and vocab.json."
        )
        raise FileNotFoundError(msg)
    directory = Path(path).expanduser()
    for fname in ("args.json", "vocab.json"):
        if not (directory / fname).is_file():
            msg = f"{str(directory)!r} is not an scGPT checkpoint folder: {fname} is missing."
            raise FileNotFoundError(msg)
    vocab = _read_vocab(directory / "vocab.json")
    args = _read_args(directory / "args.json")
    cfg = ScGPTConfig.from_args(args, ntoken=len(vocab), pad_id=vocab[PAD_TOKEN])
    if weights == "random":
        module = build_random(cfg, seed)
        weights_id = f"random:{int(seed)}"
        logger.info("scGPT: seeded random weights (seed %d) with the vocabulary and args of %s", seed, directory)
    elif weights == "pretrained":
        wpath = _find_weights(directory)
        module = ScGPTEncoder(cfg)
        _load_weights(module, wpath)
        from ._io import sha256_file

        weights_id = f"sha256:{sha256_file(wpath)}"
    else:
        msg = f"`weights` must be 'pretrained' or 'random', got {weights!r}."
        raise ValueError(msg)
    return ScGPTModel(
        module, vocab=vocab, args=args, name=name, weights_id=weights_id, source=str(directory), device=device
    )


def write_random_checkpoint(
    out_dir: str | Path,
    model_dir: str | Path,
    *,
    seed: int = 0,
    nlayers: int = 2,
    embsize: int = 64,
    nhead: int = 4,
    d_hid: int = 64,
    naming: str = "in_proj",
) -> Path:
    """Write a seeded random scGPT checkpoint in the released layout (for tests, demos and benchmarks).

    ``out_dir`` receives ``best_model.pt`` (a plain state dict with the reference model's keys, decoder heads
    included, and the real vocabulary size), ``args.json`` (``model_dir``'s with the sizes overridden) and a copy
    of ``vocab.json``.

    Parameters
    ----------
    out_dir
        Folder to write (created).
    model_dir
        Folder with the real ``args.json`` and ``vocab.json`` (e.g. ``$SCFMKIT_MODELS_DIR/scgpt-human``).
    seed
        Seed of the weights.
    nlayers, embsize, nhead, d_hid
        Architecture sizes written into ``args.json``.
    naming
        ``"in_proj"`` (PyTorch ``self_attn.in_proj_weight``) or ``"Wqkv"`` (flash-attention ``self_attn.Wqkv``).

    Returns
    -------
    ``out_dir`` as a :class:`~pathlib.Path`.
    """
    import torch

    from ._scgpt_model import ScGPTConfig, random_state_dict

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = _read_vocab(model_dir / "vocab.json")
    args = _read_args(model_dir / "args.json")
    args.update({"nlayers": int(nlayers), "embsize": int(embsize), "nheads": int(nhead), "d_hid": int(d_hid)})
    cfg = ScGPTConfig.from_args(args, ntoken=len(vocab), pad_id=vocab[PAD_TOKEN])
    state = random_state_dict(cfg, seed, naming=naming)
    torch.save(state, out_dir / "best_model.pt")
    with open(out_dir / "args.json", "w") as f:
        json.dump(args, f, indent=2)
    shutil.copyfile(model_dir / "vocab.json", out_dir / "vocab.json")
    return out_dir


def _spec_load(
    path: Path | None, *, weights: str = "pretrained", seed: int = 0, device: str | None = None, **kwargs: Any
):
    return load_scgpt(path, weights=weights, seed=seed, device=device, **kwargs)


register_model(
    ModelSpec(
        name=NAME,
        family="scgpt",
        load=_spec_load,
        description="scGPT whole-human (33M cells), 12 layers, 512 dims; <cls> cell embedding",
        hub_repo=None,
        needs="gene symbols; counts or any per-cell monotone transform",
        aliases=("scgpt",),
    )
)
