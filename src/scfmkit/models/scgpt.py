"""scGPT (Cui et al. 2024) cell and gene embeddings with scfmkit's own model code.

A checkpoint is a directory in the released layout: ``best_model.pt`` (a state dict; ``model.safetensors`` is also
accepted), ``args.json`` (architecture and preprocessing constants) and ``vocab.json`` (gene symbol -> token id).
The public whole-human weights are distributed on Google Drive by the scGPT authors (folder ``scGPT_human``);
download it and pass the folder, or put it at ``$SCFMKIT_MODELS_DIR/scgpt-human``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy import sparse

from .._checks import check_nonnegative_finite, get_matrix
from .._random import as_seed
from .._utils import logger, progress
from ._base import FoundationModel, GeneMatch, ModelSpec, TokenizedCells, autocast, register_model
from ._scgpt_io import (
    CLS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    find_weights,
    load_weights,
    read_args,
    read_vocab,
    write_random_checkpoint,
)

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

    from ._scgpt_model import ScGPTEncoder

__all__ = ["ScGPTModel", "load_scgpt", "write_random_checkpoint"]

NAME = "scgpt-human"


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
    expr_decoder
        The reference expression decoder of the checkpoint (``decoder.*``;
        :class:`~scfmkit.models._scgpt_model.ExprDecoder`), or ``None`` when the checkpoint has none.
    cls_decoder_state
        The checkpoint's ``cls_decoder.*`` tensors (prefix removed; empty when it has none): the start of the
        classification head's hidden layers (:meth:`classification_head`).
    """

    family = "scgpt"
    capabilities: ClassVar[frozenset[str]] = frozenset({"gene_dependency", "classification"})

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
        expr_decoder: Any = None,
        cls_decoder_state: dict[str, Any] | None = None,
    ) -> None:
        self.module = module.eval()
        self.expr_decoder = expr_decoder
        self.cls_decoder_state = dict(cls_decoder_state or {})
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
        self.device = device
        self._on = "cpu"  # where the module's weights are now; moved per call (see _run)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        """Width of the embeddings (``embsize`` of ``args.json``)."""
        return int(self.module.cfg.d_model)

    @property
    def n_layers(self) -> int:
        """Number of transformer layers."""
        return int(self.module.cfg.nlayers)

    def _module_on(self, device: str | None) -> str:
        dev = self.resolve_device(device)
        if dev != self._on:
            self.module.to(dev)
            if self.expr_decoder is not None:
                self.expr_decoder.to(dev)
            self._on = dev
        return dev

    def __repr__(self) -> str:
        c = self.module.cfg
        return (
            f"ScGPTModel(name={self.name!r}, weights={self.weights_id[:20]!r}, layers={c.nlayers}, "
            f"d_model={c.d_model}, vocab={c.ntoken}, device={self._on!r})"
        )

    # ------------------------------------------------------------------ genes and tokens

    def match_genes(self, genes: Sequence[str] | pd.Index, *, gene_id_type: str = "auto") -> GeneMatch:
        """Vocabulary token of every gene name (HGNC symbols, as scGPT's vocabulary; special tokens never match)."""
        if gene_id_type not in {"auto", "symbol"}:
            msg = (
                f"scGPT's vocabulary holds gene symbols; `gene_id_type` must be 'auto' or 'symbol', got "
                f"{gene_id_type!r}. Pass `gene_key=` naming a var column with symbols."
            )
            raise ValueError(msg)
        specials, vocab = set(SPECIAL_TOKENS), self.vocab
        names = [str(g) for g in genes]
        return GeneMatch.from_ids(names, lambda n: None if n in specials else vocab.get(n), "symbol")

    def _match(self, adata: AnnData, gene_key: str | None) -> GeneMatch:
        """:meth:`match_adata` with the clear error of no match at all, and the coverage logged."""
        match = self.match_adata(adata, gene_key=gene_key)
        if match.n_vars_matched == 0:
            where = "var_names" if gene_key is None else f"var[{gene_key!r}]"
            example = list(match.gene_ids[:3])
            msg = (
                f"None of the {match.n_vars} genes in {where} (e.g. {example}) is in the scGPT vocabulary, which uses "
                "HGNC gene symbols (e.g. 'CD3E'). Pass `gene_key=` naming a var column with gene symbols."
            )
            if any(str(g) != str(g).upper() for g in example):
                msg += " Human symbols are upper case; lower-case names are not matched."
            raise ValueError(msg)
        self.log_coverage(match.coverage())
        return match

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
        chunk_size = self.check_chunk_size(chunk_size)
        if max_length < 2:
            msg = f"`max_length` must be at least 2 (<cls> plus one gene), got {max_length}."
            raise ValueError(msg)
        X = get_matrix(adata, layer)
        what = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        match = self._match(adata, gene_key)
        ids, coverage = match.var_tokens, match.coverage()
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
        base_seed = as_seed(rng)
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
        ``(cells, params)`` (the contract of :func:`scfmkit.pp.tokenize`): ``cells`` is a
        :class:`~scfmkit.models.TokenizedCells` in input order with token ids, ``values`` (input values, the
        ``<cls>`` token's is ``pad_value``), ``columns`` (``adata.var`` positions of the genes used, -1 for
        ``<cls>``) and ``n_genes`` (non-zero matched genes per cell); ``params`` the gene coverage and the
        preprocessing parameters.
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
        cells = TokenizedCells.from_lists(
            tokens,
            values=values,
            columns=[np.concatenate([[-1], c]) for c in columns],  # -1: the <cls> token
            n_genes=prep["n_genes"],
        )
        return cells, prep["params"]

    # ------------------------------------------------------------------ forward passes

    def _batches(self, prep: dict[str, Any], batch_size: int):
        """Yield ``(cell_positions, columns, tokens, values, lengths)`` for batches of cells of similar length.

        Cells (of a block, see :meth:`_blocks`) are sorted by length and packed (see :meth:`_batch`); tokens are
        made batch by batch.
        """
        for rows, block in self._blocks(prep):
            order = np.argsort(prep["lengths"][rows], kind="stable")
            for start in range(0, order.size, batch_size):
                local = order[start : start + batch_size]
                yield self._batch(prep, block, rows, local)

    def _batch(self, prep: dict[str, Any], block: sparse.csr_matrix, rows: np.ndarray, local: np.ndarray):
        """One packed batch: ``(cell_positions, columns, tokens, values, lengths)``.

        ``tokens`` and ``values`` are 1-d, the cells one after another (no padding); ``lengths`` a numpy array.
        """
        import torch

        tokens, values, columns = self._tokenize_rows(prep, block, rows, local)
        lengths = np.array([t.size for t in tokens], dtype=np.int64)
        tok = torch.from_numpy(np.concatenate(tokens).astype(np.int64, copy=False))
        val = torch.from_numpy(np.concatenate(values).astype(np.float32, copy=False))
        return rows[local], columns, tok, val, lengths

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
        """Forward passes over all cells, packed; ``consume(idx, columns, out, lengths)`` gets each batch's output.

        ``out`` is ``(batch, d)`` (the ``<cls>`` states) with ``cls_only``, else the ``(batch, n, d)`` states padded
        with zeros to the batch's longest cell (only the copy is padded, not the computation).
        """
        import torch

        batch_size = self.resolve_batch_size(batch_size)
        autocast_ctx = autocast(self.resolve_device(device), precision)
        dev = self._module_on(device)
        on_gpu = torch.device(dev).type == "cuda"
        n_cells = prep["lengths"].size
        step = n_cells if prep["source"] is None else prep["chunk_size"]
        n_batches = sum(-(-min(step, n_cells - s) // batch_size) for s in range(0, n_cells, max(step, 1)))
        batches = self._batches(prep, batch_size)
        with torch.inference_mode(), autocast_ctx:
            for idx, columns, t, v, lens in progress(batches, total=n_batches, desc=desc, unit="batch"):
                bounds = [0, *np.cumsum(lens).tolist()]  # host-side ints: no device value is read back
                if on_gpu:
                    t, v = t.pin_memory().to(dev, non_blocking=True), v.pin_memory().to(dev, non_blocking=True)
                out = self.module.forward_packed(t.to(dev), v.to(dev), bounds, cls_only=cls_only).float()
                n = torch.from_numpy(lens)
                if not cls_only:  # back to (batch, n, d): the packed rows are the real positions in row-major order
                    keep = torch.arange(int(lens.max()))[None, :] < n[:, None]
                    padded = out.new_zeros((*keep.shape, out.shape[-1]))
                    padded[keep.to(dev)] = out
                    out = padded
                consume(idx, columns, out, n)
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
            strictly increasing transform that keeps zeros (normalised, ``log1p``) - all give the same bins (up to
            ``np.quantile``'s float rounding on tied values, as in the reference).
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
        batch_size = self.resolve_batch_size(batch_size)
        autocast(self.resolve_device(device), precision)  # a wrong name fails before any work
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
            match = self._match(adata, gene_key)
            ids, coverage = match.var_tokens, match.coverage()
            out = np.full((adata.n_vars, d), np.nan, dtype=np.float32)
            rows = np.flatnonzero(ids >= 0)
            dev = self._module_on(device)
            with torch.inference_mode():
                emb = self.module.encoder(torch.from_numpy(ids[rows]).to(dev)).float().cpu().numpy()
            out[rows] = emb
            return out, {**coverage, "gene_key": gene_key}
        batch_size = self.resolve_batch_size(batch_size)
        autocast(self.resolve_device(device), precision)  # a wrong name fails before any work
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

    # ------------------------------------------------------------------ classification
    def classification_head(self, n_classes: int, *, seed: int = 0, pretrained: bool = True, dropout: float = 0.2):
        """The encoder with the reference ``ClsDecoder`` (``nlayers_cls=3``) on ``<cls>`` (annotation tutorial).

        As the tutorial, the head's tensors start from the checkpoint's ``cls_decoder.*`` where name and shape match
        (the hidden layers; ``out_layer`` too when the class count matches). ``pretrained=False`` draws the encoder
        and the whole head at random. The model's own weights are not changed.
        """
        from ._scgpt_classifier import ScGPTClassifier

        kw = {"pad_id": self.pad_id, "pad_value": self.pad_value, "dropout": dropout}
        if not pretrained:
            return ScGPTClassifier.random(self.module.cfg, n_classes, seed=seed, **kw)
        return ScGPTClassifier(self.module, n_classes, seed=seed, head_state=self.cls_decoder_state, **kw)


def _matched(X: Any, cols: np.ndarray) -> sparse.csr_matrix:
    """The columns ``cols`` of ``X`` (sparse or dense) as canonical CSR (repeated entries summed, indices sorted)."""
    sub = X[:, cols]
    if sparse.issparse(sub):
        sub = sparse.csr_matrix(sub)
    else:  # scipy.sparse has no float16; float32 holds it exactly
        sub = np.asarray(sub)
        sub = sparse.csr_matrix(sub.astype(np.float32) if sub.dtype == np.float16 else sub)
    sub.sum_duplicates()
    return sub


def _positive_per_row(X: sparse.csr_matrix) -> np.ndarray:
    """Number of stored values > 0 in each row (explicit zeros do not count)."""
    counts = np.add.reduceat(np.append(X.data > 0, False).astype(np.int64), X.indptr[:-1])
    return np.where(np.diff(X.indptr) > 0, counts, 0).astype(np.int64)


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
    import torch

    from ._scgpt_model import ScGPTConfig, ScGPTEncoder, _random_heads, build_random, expr_decoder_from_state

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
    vocab = read_vocab(directory / "vocab.json")
    args = read_args(directory / "args.json")
    cfg = ScGPTConfig.from_args(args, ntoken=len(vocab), pad_id=vocab[PAD_TOKEN])
    if weights == "random":
        module = build_random(cfg, seed)
        # the decoder heads as write_random_checkpoint draws them (same seed), so both random routes agree
        heads = _random_heads(cfg, torch.Generator().manual_seed(int(seed) + 1))
        decoder = expr_decoder_from_state(heads, cfg)
        weights_id = f"random:{int(seed)}"
        logger.info("scGPT: seeded random weights (seed %d) with the vocabulary and args of %s", seed, directory)
    elif weights == "pretrained":
        wpath = find_weights(directory)
        module = ScGPTEncoder(cfg)
        heads = load_weights(module, wpath)
        decoder = expr_decoder_from_state(heads, cfg)
        from ._io import sha256_file

        weights_id = f"sha256:{sha256_file(wpath)}"
    else:
        msg = f"`weights` must be 'pretrained' or 'random', got {weights!r}."
        raise ValueError(msg)
    return ScGPTModel(
        module,
        vocab=vocab,
        args=args,
        name=name,
        weights_id=weights_id,
        source=str(directory),
        device=device,
        expr_decoder=decoder,
        cls_decoder_state=_cls_decoder_state(heads),
    )


def _cls_decoder_state(heads: dict[str, Any]) -> dict[str, Any]:
    """The ``cls_decoder.*`` tensors of a checkpoint's head tensors, prefix removed."""
    from ._scgpt_model import canonical_key

    prefix = "cls_decoder."
    return {canonical_key(k)[len(prefix) :]: v for k, v in heads.items() if canonical_key(k).startswith(prefix)}


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
        write_random=write_random_checkpoint,
        vocab_dir="scgpt-human",
        tiny={"nlayers": 2, "embsize": 32, "nhead": 4, "d_hid": 64},
    )
)
