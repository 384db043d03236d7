"""Geneformer (Theodoris et al. 2023; V2: Chen et al. 2024): rank-value tokenisation and BERT cell embeddings.

The tokeniser follows the reference ``TranscriptomeTokenizer`` and the embeddings the reference ``EmbExtractor``
token for token and within float tolerance (tests compare against outputs generated with the reference code), but
cells are batched by length, only the layers up to the requested one run, and the MLM head is computed only where a
tool asks for it (:meth:`GeneformerModel.encoder` with ``mlm_head=True``, e.g. for gene dependency maps).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from scipy import sparse

from .._checks import check_nonnegative_finite, get_matrix
from .._utils import available_cpus, logger, progress
from ._base import FoundationModel, GeneMatch, ModelSpec, autocast, register_model
from ._geneformer_genes import match_ids
from ._geneformer_io import GeneformerVocab, detect_variant, read_checkpoint, write_random_checkpoint
from ._rank_tokenize import TokenizedCells, rank_value_tokenize_counts, token_dtype

if TYPE_CHECKING:
    import torch
    from anndata import AnnData

    from ._bert import BertConfig, BertEncoder

__all__ = [
    "GeneMatch",
    "GeneformerModel",
    "GeneformerVocab",
    "detect_variant",
    "load_geneformer",
    "write_random_checkpoint",
]

_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


class GeneformerModel(FoundationModel):
    """A loaded Geneformer: dictionaries, config and weights (pretrained or seeded random).

    Use :func:`scfmkit.models.load` or :func:`scfmkit.tl.embed` rather than constructing it directly.
    """

    family = "geneformer"
    capabilities: ClassVar[frozenset[str]] = frozenset({"in_silico_perturbation", "gene_dependency", "classification"})

    def __init__(
        self,
        config: dict[str, Any],
        vocab: GeneformerVocab,
        state_dict: dict[str, torch.Tensor],
        *,
        name: str,
        weights_id: str,
        source: str,
        device: str | None = None,
    ) -> None:
        from ._bert_config import BertConfig

        self.config: BertConfig = BertConfig.from_dict(config)
        self.config_dict: dict[str, Any] = dict(config)
        self.vocab = vocab
        self.name = name
        self.weights_id = weights_id
        self.source = source
        self.device = device
        self._state_dict = state_dict
        self._encoders: dict[tuple[int, str, bool], BertEncoder] = {}
        max_token = max(vocab.token_dict.values())
        if max_token >= self.config.vocab_size:
            msg = (
                f"Token dictionary has ids up to {max_token} but config.json says vocab_size={self.config.vocab_size}."
            )
            raise ValueError(msg)

    # ------------------------------------------------------------------ description
    @property
    def variant(self) -> str:
        """``"V2"`` when the vocabulary has ``<cls>``/``<eos>``, else ``"V1"``."""
        return "V2" if self.vocab.special_tokens else "V1"

    @property
    def input_size(self) -> int:
        """Maximum number of tokens per cell, special tokens included (2048 for V1, 4096 for V2)."""
        return self.config.max_position_embeddings

    @property
    def n_layers(self) -> int:
        """Number of transformer layers."""
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        """Width of the embeddings."""
        return self.config.hidden_size

    def __repr__(self) -> str:
        return (
            f"GeneformerModel({self.name!r}, variant={self.variant}, layers={self.n_layers}, "
            f"hidden={self.config.hidden_size}, input_size={self.input_size}, weights={self.weights_id!r})"
        )

    # ------------------------------------------------------------------ genes
    def match_genes(
        self, genes: Sequence[str] | pd.Index, *, gene_id_type: str = "auto", duplicates: str = "reference"
    ) -> GeneMatch:
        """Map gene names (Ensembl ids or symbols) onto the model's tokens.

        Symbols go through the model's ``gene_name_id_dict``; V2 ids are then mapped through its
        ``ensembl_mapping_dict`` as the reference tokenizer does (upper-cased lookup). Genes without a token or median
        are dropped.

        ``var`` entries that map to the same Ensembl id: with ``duplicates="reference"`` (default) they are treated as
        the reference tokenizer treats them, for parity with what the pretrained model saw: V1 never sums them, so the
        gene is ranked twice (a repeated token, plainly a defect of the reference); V2 sums them only when its mapping
        dictionary merges distinct input ids (``sum_ensembl_ids``), else it repeats them too. A warning names the
        repeated genes. ``duplicates="sum"`` always sums the counts of entries that share a token (the corrected
        behaviour; tokens then differ from the reference's on such data).
        """
        key = (gene_id_type, duplicates, self._vocab_key())
        cached = self.__dict__.get("_match_cache")
        if cached is None or genes is not cached[1]:  # the very Index matched last (immutable) needs no conversion
            genes = pd.Index(genes).astype(str)
        if cached is not None and cached[0] == key and (cached[1] is genes or cached[1].equals(genes)):
            match = cached[2]
        else:
            match = self._match_genes(genes, gene_id_type=gene_id_type, duplicates=duplicates)
            self._match_cache = (key, genes, match)
        if match.duplicated and not match.sum_duplicates:
            names = {g: [n for n, i in zip(genes, match.gene_ids, strict=True) if i == g] for g in match.duplicated}
            shown = "; ".join(f"{g}: {', '.join(v)}" for g, v in list(names.items())[:10])
            logger.warning(
                "%d gene id(s) occur in several var entries and become repeated tokens, as in the reference %s "
                "tokenizer (%s%s). Pass `duplicates='sum'` to sum their counts instead.",
                len(names),
                self.variant,
                shown,
                "; ..." if len(names) > 10 else "",
            )
        # a copy, so that a caller changing the match does not change the cached one
        return dataclasses.replace(
            match, gene_ids=list(match.gene_ids), column=match.column.copy(), token_ids=match.token_ids.copy()
        )

    def _vocab_key(self) -> tuple[int, ...]:
        """Identifies the vocabulary's dictionaries (the cached match is recomputed when one is replaced or resized)."""
        v = self.vocab
        dicts = (v.token_dict, v.medians, v.id_mapping, v.name_to_id)
        return (v.special_tokens, *(x for d in dicts for x in (id(d), len(d or ()))))

    def _match_genes(self, genes: pd.Index, *, gene_id_type: str, duplicates: str) -> GeneMatch:
        """:meth:`match_genes` without the cache (the last match is kept: same genes, same options, same match)."""
        if gene_id_type == "auto":
            frac = np.mean([bool(_ENSEMBL_RE.match(g)) for g in genes[:2000]]) if len(genes) else 0.0
            gene_id_type = "ensembl" if frac > 0.5 else "symbol"
        if gene_id_type == "symbol":
            if not self.vocab.name_to_id:
                msg = "This model has no gene_name_id_dict*.pkl; pass Ensembl ids (`gene_key=` a var column with them)."
                raise ValueError(msg)
            ids: list[str | None] = [self.vocab.name_to_id.get(g) for g in genes]
        elif gene_id_type == "ensembl":
            ids = [g.split(".")[0] if _ENSEMBL_RE.match(g) else g for g in genes]
        else:
            msg = f"`gene_id_type` must be 'auto', 'ensembl' or 'symbol', got {gene_id_type!r}."
            raise ValueError(msg)
        return match_ids(
            ids,
            self.vocab.token_dict,
            self.vocab.medians,
            self.vocab.id_mapping,
            special_tokens=self.vocab.special_tokens,
            id_type=gene_id_type,
            duplicates=duplicates,
        )

    def match_adata(
        self, adata: AnnData, *, gene_key: str | None = None, gene_id_type: str = "auto", duplicates: str = "reference"
    ) -> GeneMatch:
        """:meth:`match_genes` on ``adata.var_names`` or the ``var`` column ``gene_key``."""
        from .._checks import var_names

        # the same var_names Index (immutable) as last time: the strings matched last time, no conversion or comparison
        last = self.__dict__.get("_var_names")
        same = gene_key is None and last is not None and adata.var_names is last[0]
        genes = last[1] if same else var_names(adata, gene_key)
        match = self.match_genes(genes, gene_id_type=gene_id_type, duplicates=duplicates)
        if gene_key is None:
            self._var_names = (adata.var_names, self._match_cache[1])
        return match

    def _medians(self, match: GeneMatch) -> np.ndarray:
        """The median of each unique matched gene (float64, in ``match.token_ids`` order)."""
        key = self._vocab_key()
        cached = self.__dict__.get("_token_medians")
        if cached is None or cached[0] != key:  # built anew when a dictionary is replaced or resized
            vocab = self.vocab
            table = np.full(max(vocab.token_dict.values()) + 1, np.nan)  # NaN: special tokens, genes without one
            for gid, tok in vocab.token_dict.items():
                if gid in vocab.medians:
                    table[tok] = vocab.medians[gid]
            self._token_medians = cached = (key, table)
        return cached[1][match.token_ids]

    # ------------------------------------------------------------------ tokens
    def iter_tokenize(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        gene_id_type: str = "auto",
        input: str = "counts",
        chunk_size: int = 2048,
        match: GeneMatch | None = None,
        out: np.ndarray | None = None,
        duplicates: str = "reference",
    ) -> Iterator[tuple[slice, TokenizedCells, dict[str, float]]]:
        """Tokenise ``adata`` chunk by chunk (works on backed AnnData with bounded memory).

        Yields ``(rows, tokens, stats)`` where ``stats`` holds the chunk's total and matched counts. With ``out``
        (an array large enough for all cells, as :meth:`tokenize` makes) the chunks' token ids are written one after
        another into it instead of into a new array each.

        The values are computed as the reference computes them on the matrix as stored: a sparse matrix (CSR, CSC)
        by scipy's multiplication by reciprocals, every stored entry ranked (an explicitly stored zero becomes a
        last-ranked token); a dense array by numpy's true division; in the dtypes of ``X`` and of ``obs['n_counts']``
        (the total counts over all genes; by default the row sums of ``X``, in the dtype scipy/numpy sum it).
        ``duplicates``: see :meth:`match_genes`.
        """
        if input not in {"counts", "lognorm"}:
            msg = f"`input` must be 'counts' or 'lognorm', got {input!r}."
            raise ValueError(msg)
        chunk_size = self.check_chunk_size(chunk_size)
        match = match or self.match_adata(adata, gene_key=gene_key, gene_id_type=gene_id_type, duplicates=duplicates)
        if match.n_vars_matched == 0:
            raise ValueError(_no_match_message(self.name, adata, match, gene_key))
        X = get_matrix(adata, layer)
        n_counts_obs = _n_counts(adata) if input == "counts" else None
        dense = not (sparse.issparse(X) or getattr(X, "format", None) in {"csr", "csc"})  # backed sparse has .format
        summed = match.has_duplicates and getattr(match, "sum_duplicates", True)
        special = self.vocab.special_tokens
        cls_id = self.vocab.token_dict["<cls>"] if special else None
        eos_id = self.vocab.token_dict["<eos>"] if special else None
        max_genes = self.input_size - (2 if special else 0)
        written = 0
        backed = _BackedCSRReader.of(X)
        deferred = input == "counts" and not summed  # the kernel reads every stored value of the chunk
        suspect = np.empty(min(chunk_size, adata.n_obs), np.bool_) if deferred else None
        for start in range(0, adata.n_obs, chunk_size):
            rows = slice(start, min(start + chunk_size, adata.n_obs))
            chunk = backed.read(rows) if backed is not None else _row_block(X, rows)
            # raw counts are checked by the ranking kernel in its pass over the values (`suspect`); any error before
            # or after it runs the full check first, so bad values are reported as such whichever check fires first
            check = functools.partial(_check_values, chunk, input=input, layer=layer, offset=start)
            if not deferred:
                check()
            try:
                if input == "lognorm":
                    chunk = chunk.copy()
                    chunk.data = np.expm1(chunk.data.astype(np.float64))
                row_total = _row_total(chunk)  # scipy keeps float32 sums float32, as the reference
                if row_total.dtype.kind in "iu":
                    _check_no_overflow(chunk, row_total, offset=start)
                n_counts = n_counts_obs[rows] if n_counts_obs is not None else row_total
                empty_total = np.flatnonzero(n_counts <= 0)
                if len(empty_total):
                    names = list(adata.obs_names[start + empty_total[:5]])
                    what = "obs['n_counts']" if n_counts_obs is not None else "total counts"
                    msg = (
                        f"{len(empty_total)} cell(s) have {what} <= 0 (rows {(start + empty_total[:5]).tolist()}, "
                        f"e.g. {names}). Remove empty cells first, e.g. `sc.pp.filter_cells(adata, min_counts=1)`."
                    )
                    raise ValueError(msg)
                # unless duplicated genes are summed the kernel reads the matched columns in place (no chunk copy)
                counts, column = (match.gather(chunk), None) if summed else (chunk, match.column)
                tokens, kept, matched = rank_value_tokenize_counts(
                    counts,
                    n_counts,
                    self._medians(match),
                    match.token_ids,
                    max_genes=max_genes,
                    cls_token=cls_id,
                    eos_token=eos_id,
                    column=column,
                    out=None if out is None else out[written:],
                    divide=dense,
                    suspect=suspect[: rows.stop - start] if deferred else None,
                )
                if deferred and suspect[: rows.stop - start].any():
                    check()  # raises with the fix
                written += len(tokens.input_ids)
                empty = np.flatnonzero(kept == 0)
                if len(empty):
                    names = list(adata.obs_names[start + empty[:5]])
                    msg = (
                        f"{len(empty)} cell(s) in rows {start}..{rows.stop - 1} have no counts in any gene that "
                        f"{self.name} knows (e.g. {names}). Remove them first, e.g. keep cells with "
                        "`fm.pp.align_genes` coverage > 0 or `sc.pp.filter_cells(adata, min_genes=...)`."
                    )
                    raise ValueError(msg)
            except ValueError:
                if deferred:
                    check()
                raise
            stats = {"total": float(row_total.sum()), "matched": float(matched.sum())}
            yield rows, tokens, stats

    def tokenize(self, adata: AnnData, **kwargs: Any) -> tuple[TokenizedCells, dict[str, Any]]:
        """Tokenise all cells; returns the tokens (input order) and gene-coverage statistics.

        ``kwargs`` are those of :meth:`iter_tokenize`; ``chunk_size`` defaults to 2,048 cells, or to
        ``IN_MEMORY_CHUNK`` (131,072) for an in-memory CSR matrix, whose chunks are views (no copy).
        """
        match = self.match_adata(
            adata,
            gene_key=kwargs.get("gene_key"),
            gene_id_type=kwargs.pop("gene_id_type", "auto"),
            duplicates=kwargs.pop("duplicates", "reference"),
        )
        # one array for all cells' tokens, sized from the stored entries per cell, that the chunks are written into
        # (its unused end is never touched, so it costs no memory); else a copy of every chunk at the end
        special = 2 * self.vocab.special_tokens
        X = get_matrix(adata, kwargs.get("layer"))
        nnz = _stored_per_row(X)
        if "chunk_size" not in kwargs and isinstance(X, sparse.csr_matrix | sparse.csr_array):
            # chunks of an in-memory CSR matrix are views (no copy): larger ones cost no memory, only fewer overheads
            kwargs["chunk_size"] = IN_MEMORY_CHUNK
        out = None
        if nnz is not None:
            dtype = token_dtype(match.token_ids, self.vocab.token_dict.get("<cls>"), self.vocab.token_dict.get("<eos>"))
            out = np.empty(int(np.minimum(nnz, self.input_size - special).sum()) + special * adata.n_obs, dtype)
        parts, total, matched = [], 0.0, 0.0
        for _, tokens, stats in self.iter_tokenize(adata, match=match, out=out, **kwargs):
            parts.append(tokens)
            total += stats["total"]
            matched += stats["matched"]
        coverage = self._coverage(match, total, matched)
        if out is None:
            return TokenizedCells.concatenate(parts), coverage
        lengths = np.concatenate([p.lengths for p in parts]) if parts else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return TokenizedCells(out[: offsets[-1]], offsets), coverage

    def _coverage(self, match: GeneMatch, total: float, matched: float) -> dict[str, Any]:
        cov = match.coverage(total=total, matched=matched)
        self.log_coverage(cov)
        return cov

    # ------------------------------------------------------------------ forward
    def encoder(self, n_layers: int, device: str, *, mlm_head: bool = False) -> BertEncoder:
        """The BERT encoder truncated to its first ``n_layers`` layers, on ``device`` (cached).

        ``mlm_head=True`` (all layers only) also loads the checkpoint's masked-LM head as ``encoder.mlm``.
        """
        key = (n_layers, device, mlm_head)
        if key not in self._encoders:
            from ._bert import BertEncoder, convert_hf_mlm_head, convert_hf_state_dict

            enc = BertEncoder(self.config, n_layers, mlm_head=mlm_head)
            weights = convert_hf_state_dict(self._state_dict, self.config, n_layers)
            if mlm_head:
                weights |= {f"mlm.{k}": v for k, v in convert_hf_mlm_head(self._state_dict, self.config).items()}
            enc.load_state_dict(weights)
            self._encoders[key] = enc.eval().to(device)
        return self._encoders[key]

    def _layers_for(self, emb_layer: int) -> int:
        if not -self.n_layers <= emb_layer <= 0:
            msg = (
                f"`emb_layer` must be between {-self.n_layers} and 0 (0 = last layer, -1 = second-to-last, as in "
                f"Geneformer's EmbExtractor), got {emb_layer}."
            )
            raise ValueError(msg)
        return self.n_layers + emb_layer

    def embed_tokens(
        self,
        tokens: TokenizedCells,
        *,
        emb_layer: int = -1,
        pooling: str = "mean",
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "float32",
        gene_sums: tuple[np.ndarray, np.ndarray] | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Cell embeddings (float32, input order) of tokenised cells.

        Cells are sorted by length and batched with similar lengths, so short cells are never padded to the input
        size. ``gene_sums=(sums, counts)`` additionally accumulates each gene token's output embedding (for
        contextual gene embeddings).
        """
        return self.embed_tokens_multi(
            tokens,
            outputs=[(emb_layer, pooling)],
            batch_size=batch_size,
            device=device,
            precision=precision,
            gene_sums=gene_sums,
            show_progress=show_progress,
        )[(emb_layer, pooling)]

    def embed_tokens_multi(
        self,
        tokens: TokenizedCells,
        *,
        outputs: list[tuple[int, str]],
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "float32",
        gene_sums: tuple[np.ndarray, np.ndarray] | None = None,
        show_progress: bool | None = None,
    ) -> dict[tuple[int, str], np.ndarray]:
        """Several ``(emb_layer, pooling)`` cell embeddings from one forward pass (see :meth:`embed_tokens`).

        ``gene_sums`` accumulates the gene-token states of the first requested layer.
        """
        import torch

        special = self.vocab.special_tokens
        for _, pooling in outputs:
            if pooling not in {"mean", "cls"}:
                msg = f"`pooling` must be 'mean' or 'cls', got {pooling!r}."
                raise ValueError(msg)
            if pooling == "cls" and not special:
                msg = f"{self.name} has no <cls> token (Geneformer V1); use `pooling='mean'` or a V2 model."
                raise ValueError(msg)
        layer_of = {out: self._layers_for(out[0]) for out in outputs}
        batch_size = self.resolve_batch_size(batch_size)
        device = self.resolve_device(device)
        autocast_ctx = autocast(device, precision)
        enc = self.encoder(max(layer_of.values()), device)
        wanted = tuple(sorted(set(layer_of.values())))
        lengths = tokens.lengths
        order = np.argsort(-lengths, kind="stable")
        result = {out: np.empty((len(tokens), self.config.hidden_size), np.float32) for out in outputs}
        skip = 1 if special else 0
        # the last layer computes only the <cls> rows when nothing else of it is read
        last = max(wanted)
        cls_only = last > 0 and gene_sums is None and all(o[1] == "cls" for o in outputs if layer_of[o] == last)
        on_gpu = torch.device(device).type == "cuda"
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        pending: list[tuple[np.ndarray, dict[tuple[int, str], torch.Tensor]]] = []
        with torch.inference_mode(), autocast_ctx:
            for idx in progress(batches, desc="geneformer", unit="batch", enabled=show_progress):
                # packed: the batch's tokens one after another, no padding (attention runs per cell)
                lens = lengths[idx]
                bounds = [0, *np.cumsum(lens).tolist()]
                flat = np.concatenate([tokens[i] for i in idx]).astype(np.int64)
                t_ids = torch.from_numpy(flat)
                t_ids = t_ids.pin_memory().to(device, non_blocking=True) if on_gpu else t_ids.to(device)
                states = enc.forward_packed(t_ids, bounds, return_layers=wanted, first_rows_only=cls_only)
                starts = torch.tensor(bounds[:-1], device=device)
                embs = {}
                for out in outputs:
                    hidden = states[layer_of[out]]
                    if out[1] == "cls":
                        embs[out] = hidden if cls_only and layer_of[out] == last else hidden[starts]
                    else:
                        # mean over the gene tokens [start + skip, end - skip); V2 excludes <cls> and <eos>
                        sums = [hidden[a + skip : b - skip].float().sum(0) for a, b in pairwise(bounds)]
                        embs[out] = torch.stack(sums) / torch.from_numpy(lens - 2 * skip).to(device)[:, None]
                pending.append((idx, embs))
                if gene_sums is not None:
                    hidden = states[layer_of[outputs[0]]].float()
                    genes = np.ones(len(flat), bool)
                    if skip:
                        genes[bounds[:-1]] = False
                        genes[np.asarray(bounds[1:]) - 1] = False
                    np.add.at(gene_sums[0], flat[genes], hidden.cpu().numpy()[genes].astype(np.float64))
                    np.add.at(gene_sums[1], flat[genes], 1)
        # one copy back per output at the end: no device-to-host sync inside the loop
        for out in outputs:
            if pending:
                order_idx = np.concatenate([idx for idx, _ in pending])
                result[out][order_idx] = torch.cat([e[out].float() for _, e in pending]).cpu().numpy()
        return result

    def embed_cells(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        gene_id_type: str = "auto",
        input: str = "counts",
        emb_layer: int = -1,
        pooling: str = "mean",
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "float32",
        chunk_size: int = 4096,
        duplicates: str = "reference",
        **kwargs: Any,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Embed every cell of ``adata`` (see :func:`scfmkit.tl.embed`); returns ``(embeddings, params)``."""
        if kwargs:
            msg = f"Unknown option(s) for Geneformer: {sorted(kwargs)}."
            raise TypeError(msg)
        self._layers_for(emb_layer)
        if pooling not in {"mean", "cls"}:
            msg = f"`pooling` must be 'mean' or 'cls', got {pooling!r}."
            raise ValueError(msg)
        if pooling == "cls" and not self.vocab.special_tokens:
            msg = f"{self.name} has no <cls> token (Geneformer V1); use `pooling='mean'` or a V2 model."
            raise ValueError(msg)
        batch_size = self.resolve_batch_size(batch_size)
        chunk_size = self.check_chunk_size(chunk_size)
        autocast(self.resolve_device(device), precision)  # a wrong name fails before any work
        match = self.match_adata(adata, gene_key=gene_key, gene_id_type=gene_id_type, duplicates=duplicates)
        out = np.empty((adata.n_obs, self.config.hidden_size), np.float32)
        total = matched = 0.0
        chunks = self.iter_tokenize(
            adata, layer=layer, gene_key=gene_key, input=input, chunk_size=chunk_size, match=match
        )
        n_chunks = -(-adata.n_obs // chunk_size)
        for rows, tokens, stats in progress(chunks, total=n_chunks, desc="geneformer chunks", unit="chunk"):
            out[rows] = self.embed_tokens(
                tokens,
                emb_layer=emb_layer,
                pooling=pooling,
                batch_size=batch_size,
                device=device,
                precision=precision,
                show_progress=None if n_chunks == 1 else False,
            )
            total += stats["total"]
            matched += stats["matched"]
        params = {
            "variant": self.variant,
            "input_size": self.input_size,
            "emb_layer": emb_layer,
            "pooling": pooling,
            "input": input,
            "layer": layer,
            "gene_key": gene_key,
            "precision": precision,
            **self._coverage(match, total, matched),
        }
        return out, params

    def embed_genes(
        self,
        adata: AnnData,
        *,
        kind: str = "contextual",
        layer: str | None = None,
        gene_key: str | None = None,
        gene_id_type: str = "auto",
        input: str = "counts",
        emb_layer: int = -1,
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "float32",
        chunk_size: int = 4096,
        duplicates: str = "reference",
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Gene embeddings in ``adata.var`` order (see :func:`scfmkit.tl.embed_genes`)."""
        if kind not in {"contextual", "token"}:
            msg = f"`kind` must be 'contextual' or 'token', got {kind!r}."
            raise ValueError(msg)
        match = self.match_adata(adata, gene_key=gene_key, gene_id_type=gene_id_type, duplicates=duplicates)
        if match.n_vars_matched == 0:
            raise ValueError(_no_match_message(self.name, adata, match, gene_key))
        h = self.config.hidden_size
        if kind == "token":
            table = self._state_dict_tensor("embeddings.word_embeddings.weight").float().numpy()
            per_token = table
            n_seen = None
        else:
            batch_size = self.resolve_batch_size(batch_size)
            sums = np.zeros((self.config.vocab_size, h), np.float64)
            counts = np.zeros(self.config.vocab_size, np.int64)
            for _, tokens, _ in self.iter_tokenize(
                adata, layer=layer, gene_key=gene_key, input=input, chunk_size=chunk_size, match=match
            ):
                self.embed_tokens(
                    tokens,
                    emb_layer=emb_layer,
                    batch_size=batch_size,
                    device=device,
                    precision=precision,
                    gene_sums=(sums, counts),
                )
            with np.errstate(invalid="ignore", divide="ignore"):
                per_token = (sums / counts[:, None]).astype(np.float32)
            n_seen = counts
        out = np.full((adata.n_vars, h), np.nan, np.float32)
        has = match.column >= 0
        out[has] = per_token[match.token_ids[match.column[has]]]
        params: dict[str, Any] = match.coverage()
        if n_seen is not None:
            params |= {"emb_layer": emb_layer, "n_genes_seen": int((n_seen[match.token_ids] > 0).sum())}
        return out, params

    # ------------------------------------------------------------------ classification
    def classification_head(self, n_classes: int, *, seed: int = 0, pretrained: bool = True):
        """A new ``BertForSequenceClassification`` on this encoder (Geneformer's ``Classifier`` network).

        Pooler and classifier are initialised as HuggingFace does (seeded); ``pretrained=False`` also draws the
        encoder at random (the random-initialisation control). The model's own weights are not changed.
        """
        from ._bert_classifier import BertSequenceClassifier

        pad = self.vocab.pad_id
        if not pretrained:
            return BertSequenceClassifier.random(self.config_dict, n_classes, pad_id=pad, seed=seed)
        return BertSequenceClassifier.from_encoder_weights(
            self.config_dict, self._state_dict, n_classes, pad_id=pad, seed=seed
        )

    def _state_dict_tensor(self, suffix: str) -> torch.Tensor:
        for key in (suffix, f"bert.{suffix}"):
            if key in self._state_dict:
                return self._state_dict[key]
        msg = f"The checkpoint has no {suffix}."
        raise KeyError(msg)


def _stored_per_row(X: Any) -> np.ndarray | None:
    """Stored entries per row of a CSR matrix, in memory or backed (``None`` for other layouts)."""
    if isinstance(X, sparse.csr_matrix | sparse.csr_array):
        return np.diff(X.indptr)
    if getattr(X, "format", None) == "csr" and hasattr(X, "group"):  # anndata's backed CSR dataset
        return np.diff(X.group["indptr"][:])
    return None


# cells per chunk of an in-memory CSR matrix in :meth:`GeneformerModel.tokenize`: chunks are views, so a chunk costs
# only its per-cell arrays (about 40 bytes a cell); one kernel call (one thread pool) for up to this many cells
IN_MEMORY_CHUNK = 131_072


class _BackedCSRReader:
    """Row blocks of a backed (h5py) CSR matrix read straight from the file into reused buffers.

    Reads ``indptr`` once and each block's ``data``/``indices`` with ``read_direct`` into two arrays that grow to the
    largest block and are then reused, so each chunk costs the file read itself: no per-call validation, no fresh
    allocation (and first-touch page faults) per chunk, and memory bounded by one block. A block is valid until the
    next :meth:`read` (the tokeniser consumes it before asking for the next).
    """

    def __init__(self, group: Any, shape: tuple[int, int]) -> None:
        self.data, self.indices = group["data"], group["indices"]
        self.indptr = np.asarray(group["indptr"][:], np.int64)
        self.n_cols = shape[1]
        self._buf: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def of(cls, X: Any) -> _BackedCSRReader | None:
        """A reader for anndata's backed CSR dataset on an HDF5 file, else ``None`` (use :func:`_row_block`)."""
        if getattr(X, "format", None) != "csr" or not hasattr(X, "group"):
            return None
        group = X.group
        needed = ("data", "indices", "indptr")
        if not all(hasattr(group.get(k), "read_direct") for k in needed):  # not h5py (e.g. zarr)
            return None
        if group["data"].dtype not in (np.float32, np.float64, np.int32, np.int64, np.uint16, np.uint32):
            return None  # e.g. float16, which scipy.sparse cannot hold: the generic path converts it
        return cls(group, tuple(X.shape))

    def read(self, rows: slice) -> sparse.csr_matrix:
        lo, hi = int(self.indptr[rows.start]), int(self.indptr[rows.stop])
        n = hi - lo
        if self._buf is None or len(self._buf[0]) < n:
            # sized once for the largest block of this many rows (blocks are read from row 0 on), and the smaller
            # buffers freed first: growing block by block held the old and the new buffers at once (peak memory)
            self._buf = None
            step = max(rows.stop - rows.start, 1)
            ends = self.indptr[np.minimum(np.arange(step, len(self.indptr) - 1 + step, step), len(self.indptr) - 1)]
            n_max = max(n, int(np.max(ends - self.indptr[:-1:step], initial=0)))
            self._buf = (np.empty(n_max, self.data.dtype), np.empty(n_max, self.indices.dtype))
        data, indices = self._buf[0][:n], self._buf[1][:n]
        if n:
            self.data.read_direct(data, np.s_[lo:hi])
            self.indices.read_direct(indices, np.s_[lo:hi])
        indptr = self.indptr[rows.start : rows.stop + 1] - lo
        if indices.dtype == np.int32 and n < 2**31:
            indptr = indptr.astype(np.int32)  # matching index dtypes: scipy keeps the arrays as they are (no copy)
        chunk = sparse.csr_matrix((data, indices, indptr), shape=(rows.stop - rows.start, self.n_cols), copy=False)
        if not chunk.has_canonical_format:
            chunk = chunk.copy()  # never change the reused buffers in place behind a later block
            chunk.sum_duplicates()  # a sparse matrix means the sum of repeated entries; also sorts the indices
        return chunk


def _row_block(X: Any, rows: slice) -> sparse.csr_matrix:
    """Rows of ``X`` as CSR; an in-memory CSR gives a read-only view of its arrays (no copy)."""
    if isinstance(X, sparse.csr_matrix | sparse.csr_array) and X.has_canonical_format:
        lo, hi = X.indptr[rows.start], X.indptr[rows.stop]
        data, indices = X.data[lo:hi], X.indices[lo:hi]
        data.flags.writeable = indices.flags.writeable = False  # views of the caller's matrix
        # set the arrays on an empty matrix of the right shape: scipy's constructor would copy views of a large base
        out = sparse.csr_matrix((rows.stop - rows.start, X.shape[1]), dtype=X.dtype)
        out.data, out.indices, out.indptr = data, indices, X.indptr[rows.start : rows.stop + 1] - lo
        out.has_canonical_format = True  # rows of a canonical matrix: no need to check the indices again
        return out
    chunk = X[rows]  # a new matrix (scipy's row slices, backed reads and dense rows all copy)
    if not sparse.issparse(chunk) and np.asarray(chunk).dtype == np.float16:
        chunk = np.asarray(chunk, dtype=np.float32)  # scipy.sparse has no float16; float32 holds it exactly
    chunk = sparse.csr_matrix(chunk) if not sparse.issparse(chunk) else chunk.tocsr()
    if not chunk.has_canonical_format:
        chunk.sum_duplicates()  # a sparse matrix means the sum of repeated entries; also sorts the indices
    return chunk


def _no_match_message(name: str, adata: AnnData, match: GeneMatch, gene_key: str | None) -> str:
    msg = (
        f"None of the {adata.n_vars} genes match {name}'s vocabulary (read as {match.id_type}s"
        f"{'' if gene_key is None else f' from var[{gene_key!r}]'}). Pass `gene_key=` naming a var column "
        "with Ensembl ids or gene symbols."
    )
    sample = [str(g) for g in adata.var_names[:50]]
    if match.id_type == "symbol" and sample and all(g != g.upper() for g in sample):
        msg += " Human gene symbols are upper case (e.g. 'CD3E'); these look lower or mixed case (mouse?)."
    return msg


def _n_counts(adata: AnnData) -> np.ndarray | None:
    """``obs['n_counts']`` (the reference tokenizer's per-cell totals) checked, or ``None`` when absent."""
    if "n_counts" not in adata.obs:
        return None
    col = adata.obs["n_counts"]
    if not (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
        msg = (
            f"obs['n_counts'] holds {col.dtype} values; Geneformer divides each cell's counts by it, so it must be the "
            "numeric total count of the cell. Fix it (e.g. `adata.obs['n_counts'] = adata.X.sum(1).A1`) or delete "
            "the column to use the row sums."
        )
        raise ValueError(msg)
    values = col.to_numpy()
    bad = np.flatnonzero(~np.isfinite(values.astype(np.float64)))
    if len(bad):
        msg = (
            f"obs['n_counts'] is NaN or infinite for {len(bad)} cell(s) (rows {bad[:5].tolist()}); Geneformer divides "
            "each cell's counts by it. Fill it with the cells' total counts or delete the column to use the row sums."
        )
        raise ValueError(msg)
    return values


def _row_total(chunk: sparse.csr_matrix) -> np.ndarray:
    """``chunk.sum(axis=1)`` (scipy's own sum), a large chunk's two halves of rows summed on two threads at once.

    Each row is summed on its own (``np.add.reduceat`` over its stored values), so the halves give the same sums;
    numpy releases the GIL while it sums.
    """
    n = chunk.shape[0]
    cpus = available_cpus()
    if cpus < 2 or chunk.nnz < 1 << 20 or not (isinstance(chunk, sparse.csr_matrix) and chunk.has_canonical_format):
        return np.asarray(chunk.sum(axis=1)).ravel()
    first, second = _row_block(chunk, slice(0, n // 2)), _row_block(chunk, slice(n // 2, n))
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(second.sum, axis=1)
        return np.concatenate([np.asarray(first.sum(axis=1)).ravel(), np.asarray(later.result()).ravel()])


def _check_no_overflow(chunk: sparse.csr_matrix, row_total: np.ndarray, *, offset: int) -> None:
    """Integer row sums that wrapped around (counts too large for their integer type) are refused."""
    exact = np.add.reduceat(np.append(chunk.data.astype(np.float64), 0.0), chunk.indptr[:-1])
    exact = np.where(np.diff(chunk.indptr) > 0, exact, 0.0)
    wrong = np.flatnonzero(np.abs(exact - row_total.astype(np.float64)) > 1e-6 * np.maximum(np.abs(exact), 1.0))
    if len(wrong):
        msg = (
            f"The total counts of {len(wrong)} cell(s) overflow {row_total.dtype} (rows "
            f"{(offset + wrong[:5]).tolist()}: true total {exact[wrong[0]]:.4g}). These are not plausible counts; "
            "check the matrix, or convert it to float64 first (`adata.X = adata.X.astype('float64')`)."
        )
        raise ValueError(msg)


def _check_values(chunk: sparse.csr_matrix, *, input: str, layer: str | None, offset: int) -> None:
    data = chunk.data
    if data.size == 0:
        return
    from ._rank_kernels import summarize

    where = "adata.X" if layer is None else f"layers[{layer!r}]"
    n_not_finite, low, high, n_fractional = summarize(data)  # one compiled pass instead of four numpy ones
    if n_not_finite or low < 0:
        check_nonnegative_finite(chunk, what=f"{where} (rows from {offset})")  # raises, with the fix
    if input == "counts" and n_fractional:
        msg = (
            f"{where} holds non-integer values (rows from {offset}), so it is not raw counts. Pass `layer=` with the "
            "raw counts, or, for log1p-normalised values, `input='lognorm'` (Geneformer's ranking is invariant to a "
            "per-cell scale, so expm1 of log1p(CP10k) data ranks genes identically to the counts)."
        )
        raise ValueError(msg)
    if input == "lognorm" and high > 30:
        msg = (
            f"{where} has values up to {high:.0f}, too large for log-normalised data. If these are raw counts "
            "use `input='counts'` (the default)."
        )
        raise ValueError(msg)


def load_geneformer(
    directory: Path | None,
    *,
    weights: str = "pretrained",
    seed: int = 0,
    device: str | None = None,
    name: str | None = None,
) -> GeneformerModel:
    """Load a Geneformer folder in the released layout (or the hub), or build it with random weights."""
    config, vocab, state_dict, weights_id, directory, detected = read_checkpoint(
        directory, weights=weights, seed=seed, name=name
    )
    return GeneformerModel(
        config, vocab, state_dict, name=detected, weights_id=weights_id, source=str(directory), device=device
    )


def _loader(name: str):
    def load(directory: Path | None, *, weights: str, seed: int, device: str | None, **kwargs: Any) -> GeneformerModel:
        return load_geneformer(directory, weights=weights, seed=seed, device=device, name=name, **kwargs)

    return load


_TINY = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}
_NEEDS = "raw counts (or log1p-normalised with input='lognorm'); Ensembl ids or symbols"
register_model(
    ModelSpec(
        name="geneformer-v1",
        family="geneformer",
        load=_loader("geneformer-v1"),
        description="Geneformer V1 (6 layers, 2,048 ranked genes, no special tokens)",
        hub_repo="ctheodoris/Geneformer",
        hub_subfolder="Geneformer-V1-10M",
        needs=_NEEDS,
        write_random=write_random_checkpoint,
        vocab_dir="geneformer-v1",
        tiny=_TINY,
    )
)
register_model(
    ModelSpec(
        name="geneformer-v2",
        family="geneformer",
        load=_loader("geneformer-v2"),
        description="Geneformer V2 gc95M (12 layers, 4,096 tokens with <cls>/<eos>)",
        hub_repo="ctheodoris/Geneformer",
        hub_subfolder="gf-12L-95M-i4096",
        needs=_NEEDS,
        aliases=("geneformer-v2-gc95M",),
        write_random=write_random_checkpoint,
        vocab_dir="geneformer-v2-gc95M",
        tiny=_TINY,
    )
)
