"""Geneformer (Theodoris et al. 2023; V2: Chen et al. 2024): rank-value tokenisation and BERT cell embeddings.

The tokeniser follows the reference ``TranscriptomeTokenizer`` and the embeddings the reference ``EmbExtractor``
token for token and within float tolerance (tests compare against outputs generated with the reference code), but
cells are batched by length, only the layers up to the requested one run, and the MLM head is never computed.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._utils import check_nonnegative_finite, get_matrix, logger, progress
from ._base import FoundationModel, ModelSpec, register_model
from ._io import hub_download, load_state_dict, safe_load_pickle, sha256_file
from ._rank_tokenize import TokenizedCells, rank_value_tokenize_counts, token_dtype

if TYPE_CHECKING:
    import torch
    from anndata import AnnData

    from ._bert import BertConfig, BertEncoder

__all__ = ["GeneMatch", "GeneformerModel", "GeneformerVocab", "detect_variant", "write_random_checkpoint"]

_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_DICT_PREFIXES = {
    "token_dict": "token_dictionary",
    "medians": "gene_median_dictionary",
    "name_to_id": "gene_name_id_dict",
    "id_mapping": "ensembl_mapping_dict",
}


def _find_dict(directory: Path, prefix: str) -> Path | None:
    hits = sorted(directory.glob(f"{prefix}*.pkl"))
    if len(hits) > 1:
        msg = f"Found several {prefix}*.pkl files in {directory}: {[h.name for h in hits]}; keep one."
        raise ValueError(msg)
    return hits[0] if hits else None


@dataclass
class GeneformerVocab:
    """The dictionaries of a Geneformer release.

    Attributes
    ----------
    token_dict
        Ensembl id (and special tokens such as ``<pad>``, ``<cls>``) -> token id.
    medians
        Ensembl id -> non-zero median of the gene's normalised expression in the pretraining corpus.
    name_to_id
        Gene symbol -> Ensembl id (optional).
    id_mapping
        Ensembl id -> collapsed Ensembl id (V2; optional). Duplicates after mapping are summed.
    """

    token_dict: dict[str, int]
    medians: dict[str, float]
    name_to_id: dict[str, str] | None = None
    id_mapping: dict[str, str] | None = None
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, directory: str | Path) -> GeneformerVocab:
        """Read the dictionaries of ``directory`` through the restricted unpickler."""
        directory = Path(directory)
        found = {attr: _find_dict(directory, prefix) for attr, prefix in _DICT_PREFIXES.items()}
        for attr in ("token_dict", "medians"):
            if found[attr] is None:
                msg = (
                    f"{directory} has no {_DICT_PREFIXES[attr]}*.pkl; a Geneformer folder needs config.json, "
                    "token_dictionary*.pkl and gene_median_dictionary*.pkl."
                )
                raise FileNotFoundError(msg)
        loaded = {attr: (safe_load_pickle(p) if p is not None else None) for attr, p in found.items()}
        for attr, value in loaded.items():
            if value is not None and not isinstance(value, dict):
                msg = f"{found[attr].name} should hold a dict, got {type(value).__name__}."
                raise ValueError(msg)
        token_dict = {str(k): int(v) for k, v in loaded["token_dict"].items()}
        medians = {str(k): float(v) for k, v in loaded["medians"].items()}
        return cls(
            token_dict=token_dict,
            medians=medians,
            name_to_id=loaded["name_to_id"],
            id_mapping=loaded["id_mapping"],
            files={attr: p.name for attr, p in found.items() if p is not None},
        )

    @property
    def special_tokens(self) -> bool:
        """Whether the vocabulary has ``<cls>`` and ``<eos>`` (Geneformer V2)."""
        return "<cls>" in self.token_dict and "<eos>" in self.token_dict

    @property
    def pad_id(self) -> int:
        """Token id of ``<pad>``."""
        return self.token_dict.get("<pad>", 0)


@dataclass
class GeneMatch:
    """How the genes of an AnnData map onto model tokens.

    Attributes
    ----------
    ensembl
        Per ``var`` entry: the (collapsed) Ensembl id used, or ``None``.
    column
        Per ``var`` entry: its column among the unique matched genes, or -1.
    token_ids, medians
        Per unique matched gene (column): its token id and median.
    id_type
        ``"ensembl"`` or ``"symbol"``: what the input gene names were.
    """

    ensembl: list[str | None]
    column: np.ndarray
    token_ids: np.ndarray
    medians: np.ndarray
    id_type: str

    @property
    def n_matched_vars(self) -> int:
        """Number of ``var`` entries that map to a token."""
        return int((self.column >= 0).sum())

    @property
    def has_duplicates(self) -> bool:
        """Whether several ``var`` entries map to the same token (their counts are then summed)."""
        return self.n_matched_vars > len(self.token_ids)

    def gather(self, X: sparse.csr_matrix) -> sparse.csr_matrix:
        """Cells x tokens: the counts of ``X`` summed per token, indices sorted.

        Needed only when :attr:`has_duplicates`; otherwise the tokeniser reads the matched columns of ``X`` in place.
        """
        return (X @ self.aggregation_matrix()).tocsr().sorted_indices()

    def aggregation_matrix(self) -> sparse.csr_matrix:
        """``n_vars x n_tokens`` 0/1 matrix; ``X @ A`` sums the counts of ``var`` entries that share a token."""
        rows = np.flatnonzero(self.column >= 0)
        return sparse.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, self.column[rows])), shape=(len(self.column), len(self.token_ids))
        )


def detect_variant(directory: str | Path) -> str:
    """Registry name of the Geneformer in ``directory``, from its dictionaries (``<cls>``/``<eos>`` => V2)."""
    directory = Path(directory)
    tok = _find_dict(directory, "token_dictionary")
    if tok is None:
        msg = f"{directory} has no token_dictionary*.pkl; cannot tell the Geneformer variant."
        raise FileNotFoundError(msg)
    vocab = safe_load_pickle(tok)
    return "geneformer-v2" if ("<cls>" in vocab and "<eos>" in vocab) else "geneformer-v1"


class GeneformerModel(FoundationModel):
    """A loaded Geneformer: dictionaries, config and weights (pretrained or seeded random).

    Use :func:`scfmkit.models.load` or :func:`scfmkit.tl.embed` rather than constructing it directly.
    """

    family = "geneformer"

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
        from ._bert import BertConfig

        self.config_dict = config
        self.config: BertConfig = BertConfig.from_dict(config)
        self.vocab = vocab
        self.name = name
        self.weights_id = weights_id
        self.source = source
        self.device = device
        self._state_dict = state_dict
        self._encoders: dict[tuple[int, str], BertEncoder] = {}
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

    def __repr__(self) -> str:
        return (
            f"GeneformerModel({self.name!r}, variant={self.variant}, layers={self.n_layers}, "
            f"hidden={self.config.hidden_size}, input_size={self.input_size}, weights={self.weights_id!r})"
        )

    # ------------------------------------------------------------------ genes
    def match_genes(self, genes: pd.Index | list[str], *, gene_id_type: str = "auto") -> GeneMatch:
        """Map gene names (Ensembl ids or symbols) onto the model's tokens.

        Symbols go through the model's ``gene_name_id_dict``; with an ``ensembl_mapping_dict`` (V2) ids are then
        collapsed as the reference tokenizer does (upper-cased lookup). Genes without a token or median are dropped;
        ``var`` entries that end on the same token are summed later.
        """
        genes = pd.Index(genes).astype(str)
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
        if self.vocab.id_mapping:
            mapping = self.vocab.id_mapping
            ids = [mapping.get(i.upper()) if i is not None else None for i in ids]
        token_dict, medians = self.vocab.token_dict, self.vocab.medians
        column = np.full(len(ids), -1, np.int64)
        first: dict[str, int] = {}
        for j, gid in enumerate(ids):
            if gid is None or gid not in token_dict or gid not in medians:
                continue
            column[j] = first.setdefault(gid, len(first))
        uniq = list(first)
        return GeneMatch(
            ensembl=ids,
            column=column,
            token_ids=np.array([token_dict[g] for g in uniq], dtype=np.int64),
            medians=np.array([medians[g] for g in uniq], dtype=np.float64),
            id_type=gene_id_type,
        )

    def match_adata(self, adata: AnnData, *, gene_key: str | None = None, gene_id_type: str = "auto") -> GeneMatch:
        """:meth:`match_genes` on ``adata.var_names`` or the ``var`` column ``gene_key``."""
        genes = adata.var_names if gene_key is None else _var_column(adata, gene_key)
        return self.match_genes(genes, gene_id_type=gene_id_type)

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
    ) -> Iterator[tuple[slice, TokenizedCells, dict[str, float]]]:
        """Tokenise ``adata`` chunk by chunk (works on backed AnnData with bounded memory).

        Yields ``(rows, tokens, stats)`` where ``stats`` holds the chunk's total and matched counts. With ``out``
        (an array large enough for all cells, as :meth:`tokenize` makes) the chunks' token ids are written one after
        another into it instead of into a new array each.
        """
        if input not in {"counts", "lognorm"}:
            msg = f"`input` must be 'counts' or 'lognorm', got {input!r}."
            raise ValueError(msg)
        match = match or self.match_adata(adata, gene_key=gene_key, gene_id_type=gene_id_type)
        if match.n_matched_vars == 0:
            msg = (
                f"None of the {adata.n_vars} genes match {self.name}'s vocabulary (read as {match.id_type}s"
                f"{'' if gene_key is None else f' from var[{gene_key!r}]'}). Pass `gene_key=` naming a var column "
                "with Ensembl ids or gene symbols."
            )
            raise ValueError(msg)
        X = get_matrix(adata, layer)
        n_counts_obs = None
        if input == "counts" and "n_counts" in adata.obs:
            n_counts_obs = np.asarray(adata.obs["n_counts"].to_numpy())
        special = self.vocab.special_tokens
        cls_id = self.vocab.token_dict["<cls>"] if special else None
        eos_id = self.vocab.token_dict["<eos>"] if special else None
        max_genes = self.input_size - (2 if special else 0)
        written = 0
        for start in range(0, adata.n_obs, chunk_size):
            rows = slice(start, min(start + chunk_size, adata.n_obs))
            chunk = _row_block(X, rows)
            _check_values(chunk, input=input, layer=layer, offset=start)
            if input == "lognorm":
                chunk = chunk.copy()
                chunk.data = np.expm1(chunk.data.astype(np.float64))
            row_total = np.asarray(chunk.sum(axis=1)).ravel()  # scipy keeps float32 sums float32, as the reference
            n_counts = n_counts_obs[rows] if n_counts_obs is not None else row_total
            # without duplicated genes the kernel reads the matched columns in place (no copy of the chunk)
            counts, column = (match.gather(chunk), None) if match.has_duplicates else (chunk, match.column)
            tokens, kept, matched = rank_value_tokenize_counts(
                counts,
                n_counts,
                match.medians,
                match.token_ids,
                max_genes=max_genes,
                cls_token=cls_id,
                eos_token=eos_id,
                column=column,
                out=None if out is None else out[written:],
            )
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
            stats = {"total": float(row_total.sum()), "matched": float(matched.sum())}
            yield rows, tokens, stats

    def tokenize(self, adata: AnnData, **kwargs: Any) -> tuple[TokenizedCells, dict[str, Any]]:
        """Tokenise all cells; returns the tokens (input order) and gene-coverage statistics."""
        match = self.match_adata(
            adata, gene_key=kwargs.get("gene_key"), gene_id_type=kwargs.pop("gene_id_type", "auto")
        )
        # one array for all cells' tokens, sized from the stored entries per cell, that the chunks are written into
        # (its unused end is never touched, so it costs no memory); else a copy of every chunk at the end
        special = 2 * self.vocab.special_tokens
        nnz = _stored_per_row(get_matrix(adata, kwargs.get("layer")))
        out = None
        if nnz is not None:
            dtype = token_dtype(match.token_ids, self.vocab.token_dict.get("<cls>"), self.vocab.token_dict.get("<eos>"))
            out = np.empty(int(np.minimum(nnz, self.input_size - special).sum()) + special * adata.n_obs, dtype)
        parts, total, matched = [], 0.0, 0.0
        for _, tokens, stats in self.iter_tokenize(adata, match=match, out=out, **kwargs):
            parts.append(tokens)
            total += stats["total"]
            matched += stats["matched"]
        coverage = self._coverage(adata.n_vars, match, total, matched)
        if out is None:
            return TokenizedCells.concatenate(parts), coverage
        lengths = np.concatenate([p.lengths for p in parts]) if parts else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return TokenizedCells(out[: offsets[-1]], offsets), coverage

    @staticmethod
    def _coverage(n_vars: int, match: GeneMatch, total: float, matched: float) -> dict[str, Any]:
        cov = {
            "n_vars": int(n_vars),
            "n_vars_matched": match.n_matched_vars,
            "n_genes_matched": len(match.token_ids),
            "frac_vars_matched": match.n_matched_vars / max(n_vars, 1),
            "frac_counts_matched": matched / total if total > 0 else float("nan"),
            "gene_id_type": match.id_type,
        }
        logger.info(
            "Geneformer gene coverage: %d/%d genes matched (%.1f%%), %.1f%% of counts",
            cov["n_vars_matched"],
            n_vars,
            100 * cov["frac_vars_matched"],
            100 * cov["frac_counts_matched"],
        )
        if cov["frac_vars_matched"] < 0.2:
            logger.warning("Only %.1f%% of genes match the Geneformer vocabulary.", 100 * cov["frac_vars_matched"])
        return cov

    # ------------------------------------------------------------------ forward
    def encoder(self, n_layers: int, device: str) -> BertEncoder:
        """The BERT encoder truncated to its first ``n_layers`` layers, on ``device`` (cached)."""
        key = (n_layers, device)
        if key not in self._encoders:
            from ._bert import BertEncoder, convert_hf_state_dict

            enc = BertEncoder(self.config, n_layers)
            enc.load_state_dict(convert_hf_state_dict(self._state_dict, self.config, n_layers))
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
        batch_size: int = 32,
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
        batch_size: int = 32,
        device: str | None = None,
        precision: str = "float32",
        gene_sums: tuple[np.ndarray, np.ndarray] | None = None,
        show_progress: bool | None = None,
    ) -> dict[tuple[int, str], np.ndarray]:
        """Several ``(emb_layer, pooling)`` cell embeddings from one forward pass (see :meth:`embed_tokens`).

        ``gene_sums`` accumulates the gene-token states of the first requested layer.
        """
        import torch

        from .._settings import settings

        special = self.vocab.special_tokens
        for _, pooling in outputs:
            if pooling not in {"mean", "cls"}:
                msg = f"`pooling` must be 'mean' or 'cls', got {pooling!r}."
                raise ValueError(msg)
            if pooling == "cls" and not special:
                msg = f"{self.name} has no <cls> token (Geneformer V1); use `pooling='mean'` or a V2 model."
                raise ValueError(msg)
        layer_of = {out: self._layers_for(out[0]) for out in outputs}
        device = settings.resolve_device(device or self.device)
        enc = self.encoder(max(layer_of.values()), device)
        wanted = tuple(sorted(set(layer_of.values())))
        autocast = _autocast(device, precision)
        lengths = tokens.lengths
        order = np.argsort(-lengths, kind="stable")
        result = {out: np.empty((len(tokens), self.config.hidden_size), np.float32) for out in outputs}
        pad = self.vocab.pad_id
        skip = 1 if special else 0
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        with torch.inference_mode(), autocast:
            for idx in progress(batches, desc="geneformer", unit="batch", enabled=show_progress):
                lens = lengths[idx]
                n = int(lens.max())
                ids = np.full((len(idx), n), pad, np.int64)
                for r, i in enumerate(idx):
                    ids[r, : lens[r]] = tokens[i]
                t_ids = torch.from_numpy(ids).to(device)
                t_len = torch.from_numpy(lens.astype(np.int64)).to(device)
                states = enc(t_ids, t_len, return_layers=wanted)
                # gene positions: [skip, len - skip); V2 excludes <cls> and <eos>
                pos = torch.arange(n, device=device)[None, :]
                gene_mask = (pos >= skip) & (pos < (t_len - skip)[:, None])
                for out in outputs:
                    hidden = states[layer_of[out]].float()
                    if out[1] == "cls":
                        emb = hidden[:, 0]
                    else:
                        emb = (hidden * gene_mask[..., None]).sum(1) / (t_len - 2 * skip)[:, None]
                    result[out][idx] = emb.cpu().numpy()
                if gene_sums is not None:
                    hidden = states[layer_of[outputs[0]]].float()
                    flat_ids = t_ids[gene_mask].cpu().numpy()
                    np.add.at(gene_sums[0], flat_ids, hidden[gene_mask].double().cpu().numpy())
                    np.add.at(gene_sums[1], flat_ids, 1)
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
        batch_size: int = 32,
        device: str | None = None,
        precision: str = "float32",
        chunk_size: int = 4096,
        **kwargs: Any,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Embed every cell of ``adata`` (see :func:`scfmkit.tl.embed`); returns ``(embeddings, params)``."""
        if kwargs:
            msg = f"Unknown option(s) for Geneformer: {sorted(kwargs)}."
            raise TypeError(msg)
        self._layers_for(emb_layer)
        if pooling == "cls" and not self.vocab.special_tokens:
            msg = f"{self.name} has no <cls> token (Geneformer V1); use `pooling='mean'` or a V2 model."
            raise ValueError(msg)
        match = self.match_adata(adata, gene_key=gene_key, gene_id_type=gene_id_type)
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
            **self._coverage(adata.n_vars, match, total, matched),
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
        batch_size: int = 32,
        device: str | None = None,
        precision: str = "float32",
        chunk_size: int = 4096,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Gene embeddings in ``adata.var`` order (see :func:`scfmkit.tl.embed_genes`)."""
        match = self.match_adata(adata, gene_key=gene_key, gene_id_type=gene_id_type)
        h = self.config.hidden_size
        if kind == "token":
            table = self._state_dict_tensor("embeddings.word_embeddings.weight").float().numpy()
            per_token = table
            n_seen = None
        elif kind == "contextual":
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
        else:
            msg = f"`kind` must be 'contextual' or 'token', got {kind!r}."
            raise ValueError(msg)
        out = np.full((adata.n_vars, h), np.nan, np.float32)
        has = match.column >= 0
        out[has] = per_token[match.token_ids[match.column[has]]]
        params: dict[str, Any] = {"n_vars_matched": match.n_matched_vars, "gene_id_type": match.id_type}
        if n_seen is not None:
            params |= {"emb_layer": emb_layer, "n_genes_seen": int((n_seen[match.token_ids] > 0).sum())}
        return out, params

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


def _row_block(X: Any, rows: slice) -> sparse.csr_matrix:
    """Rows of ``X`` as CSR; an in-memory CSR gives a read-only view of its arrays (no copy)."""
    if isinstance(X, sparse.csr_matrix | sparse.csr_array) and X.has_canonical_format:
        lo, hi = X.indptr[rows.start], X.indptr[rows.stop]
        data, indices = X.data[lo:hi], X.indices[lo:hi]
        data.flags.writeable = indices.flags.writeable = False  # views of the caller's matrix
        # set the arrays on an empty matrix of the right shape: scipy's constructor would copy views of a large base
        out = sparse.csr_matrix((rows.stop - rows.start, X.shape[1]), dtype=X.dtype)
        out.data, out.indices, out.indptr = data, indices, X.indptr[rows.start : rows.stop + 1] - lo
        return out
    chunk = X[rows]  # a new matrix (scipy's row slices, backed reads and dense rows all copy)
    chunk = sparse.csr_matrix(chunk) if not sparse.issparse(chunk) else chunk.tocsr()
    if not chunk.has_canonical_format:
        chunk.sum_duplicates()  # a sparse matrix means the sum of repeated entries; also sorts the indices
    return chunk


def _var_column(adata: AnnData, key: str) -> pd.Index:
    if key not in adata.var:
        msg = f"`gene_key={key!r}` is not a column of adata.var (columns: {list(adata.var.columns)})."
        raise KeyError(msg)
    return pd.Index(adata.var[key].astype(str))


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


def _autocast(device: str, precision: str):
    import contextlib

    import torch

    if precision in {"float32", "fp32"}:
        return contextlib.nullcontext()
    dtypes = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if precision not in dtypes:
        msg = f"`precision` must be 'float32', 'bfloat16' or 'float16', got {precision!r}."
        raise ValueError(msg)
    return torch.autocast(device_type=torch.device(device).type, dtype=dtypes[precision])


# ---------------------------------------------------------------------- loading
@dataclass(frozen=True)
class _HubLayout:
    repo: str
    weights_subfolder: str
    dictionaries: tuple[str, ...]
    revision: str | None = None


_HUB = {
    "geneformer-v1": _HubLayout(
        "ctheodoris/Geneformer",
        "Geneformer-V1-10M",
        (
            "geneformer/gene_dictionaries_30m/token_dictionary_gc30M.pkl",
            "geneformer/gene_dictionaries_30m/gene_median_dictionary_gc30M.pkl",
            "geneformer/gene_dictionaries_30m/gene_name_id_dict_gc30M.pkl",
            "geneformer/gene_dictionaries_30m/ensembl_mapping_dict_gc30M.pkl",
        ),
    ),
    "geneformer-v2": _HubLayout(
        "ctheodoris/Geneformer",
        "gf-12L-95M-i4096",
        (
            "geneformer/token_dictionary_gc95M.pkl",
            "geneformer/gene_median_dictionary_gc95M.pkl",
            "geneformer/gene_name_id_dict_gc95M.pkl",
            "geneformer/ensembl_mapping_dict_gc95M.pkl",
        ),
    ),
}


def _from_hub(name: str, *, weights: str) -> Path:
    """Assemble a local folder in the released layout from hub files (cached under settings.cache_dir)."""
    from .._settings import settings

    layout = _HUB[name]
    target = Path(settings.cache_dir) / "models" / name
    target.mkdir(parents=True, exist_ok=True)
    files = ["config.json"] + (["model.safetensors"] if weights == "pretrained" else [])
    wdir = hub_download(layout.repo, subfolder=layout.weights_subfolder, filenames=files, name=name)
    for f in files:
        if not (target / f).exists():
            shutil.copyfile(wdir / f, target / f)
    for path in layout.dictionaries:
        sub, fname = path.rsplit("/", 1)
        ddir = hub_download(layout.repo, subfolder=sub, filenames=[fname], name=name)
        if not (target / fname).exists():
            shutil.copyfile(ddir / fname, target / fname)
    return target


def _weights_file(directory: Path) -> Path | None:
    for fname in ("model.safetensors", "pytorch_model.bin"):
        if (directory / fname).is_file():
            return directory / fname
    return None


def load_geneformer(
    directory: Path | None,
    *,
    weights: str = "pretrained",
    seed: int = 0,
    device: str | None = None,
    name: str | None = None,
) -> GeneformerModel:
    """Load a Geneformer folder in the released layout (or the hub), or build it with random weights."""
    if directory is None:
        if name is None:
            msg = "No Geneformer directory given."
            raise ValueError(msg)
        directory = _from_hub(name, weights=weights)
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        msg = f"{directory} has no config.json; a Geneformer folder holds config.json, weights and dictionaries."
        raise FileNotFoundError(msg)
    config = json.loads((directory / "config.json").read_text())
    vocab = GeneformerVocab.from_dir(directory)
    detected = "geneformer-v2" if vocab.special_tokens else "geneformer-v1"
    if name is not None and name != detected:
        logger.warning(
            "%s was asked for but the dictionaries in %s are %s's; using %s.", name, directory, detected, detected
        )
    from ._bert import BertConfig, random_hf_state_dict

    if weights == "random":
        state_dict = random_hf_state_dict(BertConfig.from_dict(config), seed)
        weights_id = f"random:{seed}"
    else:
        wfile = _weights_file(directory)
        if wfile is None:
            msg = (
                f"{directory} has no model.safetensors or pytorch_model.bin. Put the released weights there, or pass "
                "`weights='random'` for the foundationless control with the same architecture and dictionaries."
            )
            raise FileNotFoundError(msg)
        state_dict = load_state_dict(wfile)
        weights_id = f"sha256:{sha256_file(wfile)}"
    return GeneformerModel(
        config, vocab, state_dict, name=detected, weights_id=weights_id, source=str(directory), device=device
    )


def write_random_checkpoint(
    out_dir: str | Path,
    dictionaries_dir: str | Path,
    *,
    seed: int = 0,
    num_hidden_layers: int | None = None,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
) -> Path:
    """Write a seeded random-weight ``BertForMaskedLM`` in the released Geneformer folder layout.

    ``out_dir`` receives ``config.json`` (the one in ``dictionaries_dir`` with the given sizes overridden),
    ``model.safetensors`` (every ``BertForMaskedLM`` weight, MLM head included, HuggingFace names) and copies of the
    dictionaries. Used by the tests and to make small stand-in checkpoints with the real vocabularies.
    """
    from safetensors.torch import save_file

    from ._bert import BertConfig, random_hf_state_dict

    out_dir, src = Path(out_dir), Path(dictionaries_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    overrides = {
        "num_hidden_layers": num_hidden_layers,
        "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads,
        "intermediate_size": intermediate_size,
    }
    config.update({k: v for k, v in overrides.items() if v is not None})
    sd = random_hf_state_dict(BertConfig.from_dict(config), seed)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    for prefix in _DICT_PREFIXES.values():
        p = _find_dict(src, prefix)
        if p is not None:
            shutil.copyfile(p, out_dir / p.name)
    return out_dir


def _loader(name: str):
    def load(directory: Path | None, *, weights: str, seed: int, device: str | None, **kwargs: Any) -> GeneformerModel:
        return load_geneformer(directory, weights=weights, seed=seed, device=device, name=name, **kwargs)

    return load


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
    )
)
