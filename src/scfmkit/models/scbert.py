"""scBERT (Yang et al., Nature Machine Intelligence 2022): binned expression of a fixed gene list through a Performer.

Follows TencentAILabHealthcare/scBERT (``preprocess.py``, ``predict.py``, ``performer_pytorch``): every cell becomes
the expression bins of the model's 16,906 genes in their fixed order (genes the data lack are zero) plus a trailing
token 0; the bins are ``floor(min(log2(1 + x), bin_num))`` of the counts normalised to 10,000 over those genes. Each
position gets its bin's embedding plus the gene's fixed gene2vec vector; the trailing token gets a zero vector. The
encoder output (the final LayerNorm, ``return_encodings=True``) is what the reference's fine-tuning head reads.

Cell embeddings pool it (as BioLLM): ``pooling="mean"`` (default) averages the 16,906 gene positions,
``pooling="cls"`` takes the trailing token. Gene embeddings: ``kind="token"`` is the gene's gene2vec row of the
checkpoint, ``kind="contextual"`` the encoder output at the gene's position averaged over all cells (every gene is an
input position of every cell).

The weights are not on the HuggingFace hub: the scBERT README links ``panglao_pretrain.pth``, ``gene2vec_16906.npy``
and ``panglao_10000.h5ad``; put them in one folder and pass it, or put it at ``$SCFMKIT_MODELS_DIR/scbert``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._checks import get_matrix
from .._utils import logger, progress
from ._base import FoundationModel, GeneMatch, ModelSpec, TokenizedCells, autocast, register_model
from ._scbert_io import write_random_checkpoint

if TYPE_CHECKING:
    from anndata import AnnData

    from ._performer import PerformerConfig, ScBertLM

__all__ = ["NAME", "ScBERTModel", "load_scbert"]

NAME = "scbert"
MIN_GENES = 200  # the reference keeps cells with at least 200 detected genes (sc.pp.filter_cells)
_POOLINGS = ("mean", "cls")


class ScBERTModel(FoundationModel):
    """A loaded scBERT: gene list, Performer encoder and its sizes.

    Use it through :func:`scfmkit.tl.embed` / :func:`scfmkit.tl.embed_genes` or :func:`scfmkit.models.load`
    (``"scbert"`` or a checkpoint directory).

    Attributes
    ----------
    genes
        The model's genes (symbols) in input order.
    config
        :class:`~scfmkit.models._performer.PerformerConfig` read off the checkpoint.
    module
        The :class:`torch.nn.Module` (the reference ``PerformerLM``).
    """

    family = "scbert"
    capabilities = frozenset({"classification"})

    def __init__(
        self,
        module: ScBertLM,
        *,
        genes: list[str],
        name: str,
        weights_id: str,
        source: str,
        device: str | None = None,
    ) -> None:
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.config: PerformerConfig = module.cfg
        if len(genes) != self.config.max_seq_len - 1:
            msg = (
                f"The gene list has {len(genes)} genes but the checkpoint has {self.config.max_seq_len} positions "
                f"({self.config.max_seq_len - 1} genes plus the trailing token); use the gene list of these weights."
            )
            raise ValueError(msg)
        self.genes = list(genes)
        self.gene_index = {g: i for i, g in enumerate(self.genes)}
        self.name = name
        self.weights_id = weights_id
        self.source = source
        self.device = device
        self._device_module: dict[str, ScBertLM] = {}

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ScBERTModel(name={self.name!r}, genes={len(self.genes)}, depth={c.depth}, heads={c.heads}, "
            f"dim={c.dim}, bins={c.bin_num}, weights={self.weights_id[:20]!r})"
        )

    @property
    def hidden_size(self) -> int:
        """Width of the embeddings (200)."""
        return self.config.dim

    @property
    def n_layers(self) -> int:
        """Number of Performer layers (6 for the released model)."""
        return self.config.depth

    @property
    def n_genes(self) -> int:
        """Number of model genes (16,906 for the released model)."""
        return len(self.genes)

    def classification_head(
        self, n_classes: int, *, seed: int = 0, pretrained: bool = True, h_dim: int = 128, dropout: float = 0.0
    ) -> Any:
        """The encoder with the reference fine-tuning head (``Identity`` of ``finetune.py``), seeded.

        A :class:`~scfmkit.models._scbert_classifier.ScBERTClassifier`: bins ``(b, n_genes + 1)`` -> logits.
        ``pretrained=False`` draws the encoder at random too (gene2vec stays fixed). The model's own weights are not
        changed.
        """
        from ._scbert_classifier import ScBERTClassifier

        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
            msg = f"`n_classes` must be an integer >= 2, got {n_classes!r}."
            raise ValueError(msg)
        kw = {"seed": int(seed), "h_dim": h_dim, "dropout": dropout}
        if not pretrained:
            return ScBERTClassifier.random(self.module, int(n_classes), **kw)
        return ScBERTClassifier(self.module, int(n_classes), **kw)

    # ------------------------------------------------------------------ genes
    def match_genes(self, genes: pd.Index | list[str], *, gene_id_type: str = "auto") -> GeneMatch:
        """Map gene symbols onto the model's gene list (exact names, as the reference's reindexing).

        A gene named by several ``var`` entries takes the first one's values (as the reference's ``list.index``);
        the later entries are left out (column -1) but keep the gene id, so gene embeddings fill them. Token ids are
        positions in the gene list.
        """
        from .geneformer import _ENSEMBL_RE

        genes = pd.Index(genes).astype(str)
        if gene_id_type == "auto":
            frac = np.mean([bool(_ENSEMBL_RE.match(g)) for g in genes[:2000]]) if len(genes) else 0.0
            gene_id_type = "ensembl" if frac > 0.5 else "symbol"
        if gene_id_type == "ensembl":
            msg = (
                "scBERT's gene list holds gene symbols (PanglaoDB), but these genes look like Ensembl ids. Pass "
                "`gene_key=` naming a var column with symbols (e.g. 'gene_symbols' or 'feature_name')."
            )
            raise ValueError(msg)
        if gene_id_type != "symbol":
            msg = f"`gene_id_type` must be 'auto' or 'symbol' for scBERT, got {gene_id_type!r}."
            raise ValueError(msg)
        ids: list[str | None] = [g if g in self.gene_index else None for g in genes]
        column = np.full(len(ids), -1, np.int64)
        first: dict[str, int] = {}
        n_repeats = 0
        for j, gid in enumerate(ids):
            if gid is None:
                continue
            if gid in first:
                n_repeats += 1
                continue
            column[j] = first[gid] = len(first)
        if n_repeats:
            logger.warning(
                "scBERT: %d var entries repeat a gene name; the first entry's values are used, as the reference does.",
                n_repeats,
            )
        token_ids = np.array([self.gene_index[g] for g in first], np.int64)
        return GeneMatch(gene_ids=ids, column=column, token_ids=token_ids, id_type=gene_id_type)

    # ------------------------------------------------------------------ tokens
    def iter_bins(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        gene_id_type: str = "auto",
        input: str = "counts",
        chunk_size: int = 1024,
        match: GeneMatch | None = None,
    ):
        """Yield ``(rows, bins, stats)`` chunk by chunk: uint8 ``(cells, n_genes + 1)`` tokens (trailing 0 included).

        ``stats`` holds the chunk's total and matched counts and the number of cells below 200 matched genes.
        Works on backed AnnData with bounded memory.
        """
        from ._scbert_preprocess import bin_expression, reindex_to_genes

        if input not in {"counts", "lognorm"}:
            msg = f"`input` must be 'counts' or 'lognorm', got {input!r}."
            raise ValueError(msg)
        chunk_size = self.check_chunk_size(chunk_size)
        match = match or self.match_adata(adata, gene_key=gene_key, gene_id_type=gene_id_type)
        _require_matches(match, adata, gene_key)
        var_cols = np.flatnonzero(match.column >= 0)
        positions = match.token_ids[match.column[var_cols]]
        X = get_matrix(adata, layer)
        from .geneformer import _check_values, _row_block

        for start in range(0, adata.n_obs, chunk_size):
            rows = slice(start, min(start + chunk_size, adata.n_obs))
            chunk = _row_block(X, rows)
            _check_values(chunk, input=input, layer=layer, offset=start)
            if input == "lognorm":
                chunk = chunk.copy()
                chunk.data = np.expm1(chunk.data.astype(np.float64))
            on_genes = reindex_to_genes(chunk, var_cols, positions, self.n_genes)
            bins = bin_expression(on_genes, self.config.bin_num)
            detected = np.asarray((on_genes > 0).sum(axis=1)).ravel()
            stats = {
                "detected": detected,
                "total": float(chunk.sum(dtype=np.float64)),
                "matched": float(on_genes.sum(dtype=np.float64)),
                "n_cells_below_min_genes": int((detected < MIN_GENES).sum()),
                "n_cells_without_counts": int((detected == 0).sum()),
            }
            yield rows, bins, stats

    def tokenize(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        gene_id_type: str = "auto",
        input: str = "counts",
        chunk_size: int = 1024,
    ) -> tuple[TokenizedCells, dict[str, Any]]:
        """Every cell's ``n_genes + 1`` positions (input order) and the gene coverage.

        ``input_ids`` are the positions ``0..n_genes`` (gene ``i`` of the gene list, then the trailing token),
        ``values`` the expression bins (uint8, 0 for missing genes and the trailing token) and ``n_genes`` the
        number of detected model genes per cell.
        """
        match = self.match_adata(adata, gene_key=gene_key, gene_id_type=gene_id_type)
        width = self.n_genes + 1
        values = np.empty(adata.n_obs * width, np.uint8)
        detected = np.zeros(adata.n_obs, np.int64)
        acc = _Coverage()
        for rows, bins, stats in self.iter_bins(
            adata, layer=layer, gene_key=gene_key, input=input, chunk_size=chunk_size, match=match
        ):
            values[rows.start * width : rows.stop * width] = bins.ravel()
            detected[rows] = stats["detected"]
            acc.add(stats)
        ids = np.tile(np.arange(width, dtype=np.int16 if width < np.iinfo(np.int16).max else np.int32), adata.n_obs)
        offsets = np.arange(adata.n_obs + 1, dtype=np.int64) * width
        tokens = TokenizedCells(ids, offsets, values=values, n_genes=detected)
        return tokens, acc.params(self, match)

    # ------------------------------------------------------------------ forward
    def encoder(self, device: str) -> ScBertLM:
        """The Performer on ``device`` (cached)."""
        if device not in self._device_module:
            import copy

            import torch

            mod = self.module if torch.device(device).type == "cpu" else copy.deepcopy(self.module).to(device)
            self._device_module[device] = mod.eval()
        return self._device_module[device]

    def forward_bins(
        self,
        bins: np.ndarray,
        *,
        batch_size: int,
        device: str,
        precision: str = "float32",
        consume,
        desc: str = "scbert",
        show_progress: bool | None = None,
    ) -> None:
        """Run the encoder on token rows ``bins`` in batches; ``consume(rows, encodings)`` gets each batch."""
        import torch

        enc = self.encoder(device)
        batches = [np.arange(i, min(i + batch_size, len(bins))) for i in range(0, len(bins), batch_size)]
        with torch.inference_mode(), autocast(device, precision):
            for idx in progress(batches, desc=desc, unit="batch", enabled=show_progress):
                ids = torch.from_numpy(bins[idx].astype(np.int64)).to(device)
                consume(idx, enc(ids).float())

    def embed_cells(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        gene_id_type: str = "auto",
        input: str = "counts",
        pooling: str = "mean",
        emb_layer: int | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "float32",
        chunk_size: int = 1024,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Embed every cell of ``adata``; returns ``(embeddings, params)`` (float32 ``(n_obs, 200)``, input order).

        Parameters
        ----------
        adata
            Cells x genes with gene symbols in ``var_names`` or ``var[gene_key]``.
        layer, gene_key, gene_id_type
            Where the values and gene symbols are.
        input
            ``"counts"`` (raw integer counts, the reference's input) or ``"lognorm"`` (``log1p`` of normalised
            counts: ``expm1`` is taken, and the renormalisation to 10,000 over the model's genes makes the result
            that of the counts). Non-integer values with ``"counts"`` are refused, as for Geneformer.
        pooling
            ``"mean"`` over the gene positions (default) or ``"cls"``: the trailing token (BioLLM's names).
        emb_layer
            Only the final encoder output (``None`` or ``-1``) is defined.
        batch_size, device, precision
            Cells per forward pass (each cell is ``n_genes + 1`` positions), torch device, float32 or autocast.
        chunk_size
            Cells binned at a time (backed AnnData are read in chunks).
        """
        if pooling not in _POOLINGS:
            msg = f"scBERT `pooling` must be one of {_POOLINGS} ('cls' = the trailing token), got {pooling!r}."
            raise ValueError(msg)
        if emb_layer not in (None, -1):
            msg = f"scBERT cell embeddings are the final encoder output; `emb_layer` must be None, got {emb_layer}."
            raise ValueError(msg)
        batch_size = self.resolve_batch_size(batch_size)
        dev = self.resolve_device(device)
        autocast(dev, precision)  # a wrong name fails before any work
        match = self.match_adata(adata, gene_key=gene_key, gene_id_type=gene_id_type)
        out = np.empty((adata.n_obs, self.hidden_size), np.float32)
        acc = _Coverage()
        n_chunks = -(-adata.n_obs // chunk_size)
        for rows, bins, stats in self.iter_bins(
            adata, layer=layer, gene_key=gene_key, input=input, chunk_size=chunk_size, match=match
        ):
            acc.add(stats)

            def consume(idx, enc, start=rows.start):
                emb = enc[:, :-1].mean(dim=1) if pooling == "mean" else enc[:, -1]
                out[start + idx] = emb.cpu().numpy()

            self.forward_bins(
                bins,
                batch_size=batch_size,
                device=dev,
                precision=precision,
                consume=consume,
                show_progress=None if n_chunks == 1 else False,
            )
        params = {
            "pooling": pooling,
            "input": input,
            "layer": layer,
            "gene_key": gene_key,
            "precision": precision,
            "batch_size": batch_size,
            "device": dev,
            "bin_num": self.config.bin_num,
            **acc.params(self, match),
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
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "float32",
        chunk_size: int = 1024,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Gene embeddings in ``adata.var`` order (NaN rows for genes outside the model's gene list).

        ``kind="token"``: the checkpoint's gene2vec row of each gene (no cells are run). ``kind="contextual"``: the
        encoder output at the gene's position averaged over all cells of ``adata`` (options as :meth:`embed_cells`).
        """
        import torch

        if kind not in {"contextual", "token"}:
            msg = f"`kind` must be 'contextual' or 'token', got {kind!r}."
            raise ValueError(msg)
        match = self.match_adata(adata, gene_key=gene_key, gene_id_type=gene_id_type)
        _require_matches(match, adata, gene_key)
        gene_pos = np.array([-1 if g is None else self.gene_index[g] for g in match.gene_ids], np.int64)
        has = gene_pos >= 0
        out = np.full((adata.n_vars, self.hidden_size), np.nan, np.float32)
        if kind == "token":
            table = self.module.pos_emb.emb.weight.detach().float().cpu().numpy()
            out[has] = table[gene_pos[has]]
            return out, {**match.coverage(), "gene_key": gene_key}
        batch_size = self.resolve_batch_size(batch_size)
        dev = self.resolve_device(device)
        autocast(dev, precision)
        sums = torch.zeros((self.n_genes, self.hidden_size), dtype=torch.float64)
        acc = _Coverage()

        def consume(_idx, enc):
            sums.add_(enc[:, :-1].double().sum(dim=0).cpu())

        for _, bins, stats in self.iter_bins(
            adata, layer=layer, gene_key=gene_key, input=input, chunk_size=chunk_size, match=match
        ):
            acc.add(stats)
            self.forward_bins(bins, batch_size=batch_size, device=dev, precision=precision, consume=consume)
        if adata.n_obs:
            out[has] = (sums / adata.n_obs).numpy()[gene_pos[has]].astype(np.float32)
        params = {
            "input": input,
            "layer": layer,
            "gene_key": gene_key,
            "precision": precision,
            "batch_size": batch_size,
            "device": dev,
            **acc.params(self, match),
        }
        return out, params


def _require_matches(match: GeneMatch, adata: AnnData, gene_key: str | None) -> None:
    if match.n_vars_matched == 0:
        where = "var_names" if gene_key is None else f"var[{gene_key!r}]"
        msg = (
            f"None of the {adata.n_vars} genes in {where} (e.g. {list(adata.var_names[:3])}) is in scBERT's gene "
            "list, which uses gene symbols (e.g. 'CD3E'). Pass `gene_key=` naming a var column with symbols."
        )
        raise ValueError(msg)


class _Coverage:
    """Counts summed over chunks, turned into the coverage entries of ``params``."""

    def __init__(self) -> None:
        self.total = self.matched = 0.0
        self.below = self.empty = 0

    def add(self, stats: dict[str, Any]) -> None:
        self.total += stats["total"]
        self.matched += stats["matched"]
        self.below += stats["n_cells_below_min_genes"]
        self.empty += stats["n_cells_without_counts"]

    def params(self, model: ScBERTModel, match: GeneMatch) -> dict[str, Any]:
        cov = match.coverage(total=self.total, matched=self.matched)
        model.log_coverage(cov)
        cov |= {
            "n_model_genes": model.n_genes,
            "frac_model_genes_present": match.n_genes_matched / model.n_genes,
            "n_cells_below_200_genes": self.below,
            "n_cells_without_counts": self.empty,
        }
        logger.info(
            "scBERT: %d of the model's %d genes are in the data (%.1f%%); the others are zero, as in the reference.",
            match.n_genes_matched,
            model.n_genes,
            100 * cov["frac_model_genes_present"],
        )
        if cov["frac_model_genes_present"] < 0.5:
            logger.warning(
                "scBERT: only %.1f%% of the model's genes are in the data; the rest are zero, as in the reference.",
                100 * cov["frac_model_genes_present"],
            )
        if self.below:
            logger.warning(
                "scBERT: %d cells have fewer than %d detected model genes; the reference's preprocess.py drops such "
                "cells (sc.pp.filter_cells(min_genes=200)); they are embedded here.",
                self.below,
                MIN_GENES,
            )
        return cov


# ---------------------------------------------------------------------- loading
def load_scbert(
    path: str | Path | None,
    *,
    weights: str = "pretrained",
    seed: int = 0,
    device: str | None = None,
    name: str = NAME,
) -> ScBERTModel:
    """Load an scBERT folder (``panglao_pretrain.pth``, gene list, ``gene2vec_16906.npy``).

    ``weights="random"`` builds the released architecture (6 layers, 10 heads of 64, 5 bins) on the folder's gene
    list and gene2vec with seeded random weights; only those two files are read.
    """
    import torch

    from ._io import check_finite, sha256_file
    from ._performer import PerformerConfig, ScBertLM, random_state_dict
    from ._scbert_io import (
        GENE2VEC_FILE,
        WEIGHTS_FILE,
        find_gene_list,
        random_config,
        read_gene2vec,
        read_gene_list,
        read_weights,
    )

    if path is None:
        msg = (
            f"No local folder for {name!r}. scBERT's weights are not on the HuggingFace hub: download "
            "panglao_pretrain.pth, gene2vec_16906.npy and panglao_10000.h5ad (links in the scBERT README) into one "
            f"folder and pass it as `model='/path/to/dir'` or `path=`, or put it at $SCFMKIT_MODELS_DIR/{name}/. "
            "`weights='random'` needs the gene list and gene2vec_16906.npy."
        )
        raise FileNotFoundError(msg)
    directory = Path(path).expanduser()
    genes = read_gene_list(find_gene_list(directory))
    if len(set(genes)) != len(genes):
        msg = f"The gene list of {str(directory)!r} repeats names; scBERT's gene list is unique."
        raise ValueError(msg)
    g2v_path = directory / GENE2VEC_FILE
    if weights == "random":
        if not g2v_path.is_file():
            msg = f"{str(directory)!r} has no {GENE2VEC_FILE}, which `weights='random'` needs (the fixed embedding)."
            raise FileNotFoundError(msg)
        g2v = read_gene2vec(g2v_path)
        if g2v.shape[0] != len(genes):
            msg = f"{GENE2VEC_FILE} has {g2v.shape[0]} rows but the gene list {len(genes)} genes."
            raise ValueError(msg)
        cfg = random_config(genes, g2v)
        state = random_state_dict(cfg, g2v, seed)
        check_finite(state, source=repr(str(g2v_path)))
        weights_id = f"random:{int(seed)}"
        logger.info("scBERT: seeded random weights (seed %d) with the gene list and gene2vec of %s", seed, directory)
    elif weights == "pretrained":
        wpath = directory / WEIGHTS_FILE
        if not wpath.is_file():
            msg = (
                f"{str(directory)!r} has no {WEIGHTS_FILE}. Download it (scBERT README), or pass `weights='random'` "
                "for the foundationless control with the same architecture and gene list."
            )
            raise FileNotFoundError(msg)
        state = read_weights(wpath)
        cfg = PerformerConfig.from_state_dict(state)
        if g2v_path.is_file():
            rows = np.load(g2v_path, mmap_mode="r", allow_pickle=False).shape[0]
            if rows != cfg.max_seq_len - 1:
                msg = f"{GENE2VEC_FILE} has {rows} rows but the checkpoint {cfg.max_seq_len - 1} gene positions."
                raise ValueError(msg)
        weights_id = f"sha256:{sha256_file(wpath)}"
    else:
        msg = f"`weights` must be 'pretrained' or 'random', got {weights!r}."
        raise ValueError(msg)
    module = ScBertLM(cfg, pos_dtype=state["pos_emb.emb.weight"].dtype)
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith("to_out.")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        msg = (
            f"The scBERT weights do not match the architecture read off them: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. Check that the file is a complete PerformerLM state dict."
        )
        raise ValueError(msg)
    if "to_out.weight" not in state:
        logger.info("scBERT: the checkpoint has no pretraining head (to_out); embeddings do not need it.")
        state = {**state, **{k: v for k, v in own.items() if k.startswith("to_out.")}}
    with torch.no_grad():
        module.load_state_dict(state, strict=True)
    return ScBERTModel(module, genes=genes, name=name, weights_id=weights_id, source=str(directory), device=device)


def _spec_load(path: Path | None, *, weights: str = "pretrained", seed: int = 0, device: str | None = None, **kw):
    return load_scbert(path, weights=weights, seed=seed, device=device, **kw)


register_model(
    ModelSpec(
        name=NAME,
        family="scbert",
        load=_spec_load,
        description="scBERT (PanglaoDB), Performer 6 layers x 10 heads, 200 dims, 16,906 genes in 5 expression bins",
        hub_repo=None,
        needs="raw counts (or log1p-normalised with input='lognorm'); gene symbols",
        write_random=write_random_checkpoint,
        vocab_dir="scbert",
        tiny={"n_genes": 2000, "depth": 1, "heads": 2, "dim_head": 16, "nb_features": 16, "ff_mult": 1},
    )
)
