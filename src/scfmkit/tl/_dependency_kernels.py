"""Array kernels of gene dependency maps: in-silico perturbation sums per (source, target) and the baselines.

No AnnData: the kernels take a loaded model, its tokenised cells and token ids, and return per-source sums and
counts over target columns; :mod:`scfmkit.tl._dependency` turns them into ``varp`` matrices.

Cost: every kernel runs one forward pass of each cell batch unperturbed, then one forward pass per source gene of
the cells of that batch in which the source can be perturbed (for deletion / zeroing: the cells that express it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DependencySums",
    "geneformer_dependency_sums",
    "implied_effects",
    "scgpt_dependency_sums",
    "spearman_columns",
]


@dataclass
class DependencySums:
    """Sums and counts of per-cell dependency scores, sources x target columns.

    Attributes
    ----------
    sums
        Score name -> ``(n_sources, n_targets)`` float64 sums over cells.
    counts
        ``(n_sources, n_targets)``: number of cells that contributed (the cells expressing both genes).
    n_cells
        Per source: the cells in which it was perturbed.
    attention_sums, attention_counts
        ``(n_sources, n_targets)``: the attention from each target (query) to each source (key) in the unperturbed
        cells, averaged over heads, summed over the cells holding both (``None`` unless asked for).
    n_forward
        Forward passes run (batches, unperturbed and perturbed).
    """

    sums: dict[str, np.ndarray]
    counts: np.ndarray
    n_cells: np.ndarray
    attention_sums: np.ndarray | None = None
    attention_counts: np.ndarray | None = None
    n_forward: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def means(self) -> dict[str, np.ndarray]:
        """Score name -> mean over the contributing cells (NaN where no cell holds both genes)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {k: np.where(self.counts > 0, v / self.counts, np.nan) for k, v in self.sums.items()}
            if self.attention_sums is not None:
                out["attention"] = np.where(
                    self.attention_counts > 0, self.attention_sums / self.attention_counts, np.nan
                )
        return out


def _new_sums(scores: Sequence[str], n_src: int, n_tgt: int, attention: bool) -> DependencySums:
    return DependencySums(
        sums={s: np.zeros((n_src, n_tgt)) for s in scores},
        counts=np.zeros((n_src, n_tgt), np.int64),
        n_cells=np.zeros(n_src, np.int64),
        attention_sums=np.zeros((n_src, n_tgt)) if attention else None,
        attention_counts=np.zeros((n_src, n_tgt), np.int64) if attention else None,
    )


def _accumulate_attention(
    res: DependencySums, attn, ids: np.ndarray, lengths: np.ndarray, src_index: np.ndarray, tok2col: np.ndarray
) -> None:
    """Add the head-mean attention of each target query to each source key of a batch of cells."""
    mean = attn.float().mean(1).cpu().numpy()  # (batch, query, key)
    for r in range(ids.shape[0]):
        row = ids[r, : lengths[r]]
        src = src_index[row]
        key_pos = np.flatnonzero(src >= 0)
        col = tok2col[row]
        q_pos = np.flatnonzero(col >= 0)
        if key_pos.size == 0 or q_pos.size == 0:
            continue
        block = mean[r][np.ix_(q_pos, key_pos)]  # targets x sources present
        k = src[key_pos]
        c = col[q_pos]
        np.add.at(res.attention_sums, (k[None, :], c[:, None]), block)
        np.add.at(res.attention_counts, (k[None, :], c[:, None]), 1)
    # a gene does not attend to itself as a "dependency": self pairs are dropped at the end by the wrapper


def _index_of(tokens: np.ndarray, size: int) -> np.ndarray:
    """Lookup array: token id -> its position in ``tokens`` (-1 elsewhere)."""
    out = np.full(size, -1, np.int64)
    out[np.asarray(tokens, np.int64)] = np.arange(len(tokens))
    return out


def _aligned(
    cell: np.ndarray, source: int, *, mode: str, skip: int, max_genes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One cell perturbed as Geneformer's InSilicoPerturber does, with the positions of the genes both keep.

    Returns ``(perturbed_ids, original_positions, perturbed_positions)`` (positions in the full sequences, special
    tokens included), or ``None`` when ``mode="delete"`` and the cell does not express ``source`` (or holds nothing
    else). Deletion drops the token; overexpression moves (or inserts) it to the front of the genes and truncates
    the end to the input size, so the genes compared are those that were neither moved nor truncated off.
    """
    body = cell[skip : len(cell) - skip]
    present = body == source
    head, tail = cell[:skip], cell[len(cell) - skip :]
    if mode == "delete":
        if not present.any() or present.all():
            return None
        keep = np.flatnonzero(~present)
        return np.concatenate([head, body[keep], tail]), skip + keep, skip + np.arange(keep.size)
    rest = np.flatnonzero(~present)[: max(max_genes - 1, 0)]
    new = np.concatenate([head, np.asarray([source], cell.dtype), body[rest], tail])
    return new, skip + rest, skip + 1 + np.arange(rest.size)


def _pad(cells: Sequence[np.ndarray], pad: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(c) for c in cells], np.int64)
    ids = np.full((len(cells), int(lengths.max())), pad, np.int64)
    for r, c in enumerate(cells):
        ids[r, : len(c)] = c
    return ids, lengths


def geneformer_dependency_sums(
    model: Any,
    tokens: Any,
    sources: np.ndarray,
    targets: np.ndarray,
    *,
    mode: str = "delete",
    emb_layer: int = -1,
    scores: Sequence[str] = ("embedding", "logodds"),
    attention_layer: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    show_progress: bool | None = None,
) -> DependencySums:
    """Geneformer dependency sums: perturb each source token in every cell, compare every other gene.

    Parameters
    ----------
    model
        A loaded :class:`~scfmkit.models.geneformer.GeneformerModel`.
    tokens
        Its :class:`~scfmkit.models.TokenizedCells` of the cells.
    sources, targets
        Token ids of the source genes (rows) and the target genes (columns).
    mode
        ``"delete"`` or ``"overexpress"`` (as Geneformer's ``InSilicoPerturber``).
    emb_layer
        Layer of the contextual gene embeddings (0 last, -1 second to last, as ``EmbExtractor``).
    scores
        ``"embedding"``: ``1 - cos`` between a target's contextual embedding in the perturbed and the original cell
        (the gene cosine similarities of ``InSilicoPerturber`` with ``emb_mode="cell_and_gene"``); ``"logodds"``:
        perturbed minus original masked-LM log-odds ``log p/(1-p)`` of the target token at its position (read
        unmasked from the MLM head, so that a source costs one pass rather than one per target).
    attention_layer
        1-based layer whose attention weights (query target -> key source, head mean) are summed over the
        unperturbed cells; ``None`` for none.
    batch_size, device, show_progress
        Cells per forward pass, torch device, progress bar.
    """
    import torch
    import torch.nn.functional as F

    from scfmkit._utils import progress

    unknown = set(scores) - {"embedding", "logodds"}
    if unknown or not scores:
        msg = f"Geneformer dependency scores are 'embedding' and 'logodds', got {list(scores)}."
        raise ValueError(msg)
    if mode not in {"delete", "overexpress"}:
        msg = f"Geneformer perturbations are 'delete' or 'overexpress', got {mode!r}."
        raise ValueError(msg)
    n_layers = model.n_layers
    if not -n_layers <= emb_layer <= 0:
        msg = f"`emb_layer` must be between {-n_layers} and 0, got {emb_layer}."
        raise ValueError(msg)
    layer_emb = n_layers + emb_layer
    want_lo = "logodds" in scores
    depth = n_layers if (want_lo or (attention_layer or 0) > layer_emb) else layer_emb
    if attention_layer is not None and not 1 <= attention_layer <= n_layers:
        msg = f"`attention_layer` must be between 1 and {n_layers}, got {attention_layer}."
        raise ValueError(msg)
    enc = model.encoder(depth, device, mlm_head=want_lo)
    special = bool(model.vocab.special_tokens)
    skip = 1 if special else 0
    max_genes = model.input_size - 2 * skip
    pad = model.vocab.pad_id
    vocab = model.config.vocab_size
    src_index = _index_of(sources, vocab)
    tok2col = _index_of(targets, vocab)
    res = _new_sums(scores, len(sources), len(targets), attention_layer is not None)
    wanted = tuple(sorted({layer_emb, depth}))
    lengths_all = tokens.lengths
    order = np.argsort(-lengths_all, kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def run(ids: np.ndarray, lens: np.ndarray, attention: bool = False):
        t_ids = torch.from_numpy(ids).to(device)
        out = enc(
            t_ids,
            torch.from_numpy(lens).to(device),
            return_layers=wanted,
            return_attention=attention_layer if attention else None,
        )
        res.n_forward += 1
        return t_ids, out

    with torch.inference_mode():
        for idx in progress(batches, desc="gene dependency", unit="batch", enabled=show_progress):
            cells = [np.asarray(tokens[i], np.int64) for i in idx]
            ids, lens = _pad(cells, pad)
            t_ids, out = run(ids, lens, attention=attention_layer is not None)
            emb_o = out[layer_emb].float()
            if attention_layer is not None:
                _accumulate_attention(res, out["attention"], ids, lens, src_index, tok2col)
            lo_o = None
            if want_lo:
                pos = torch.arange(ids.shape[1], device=device)[None, :]
                real = pos < torch.from_numpy(lens).to(device)[:, None]
                lo_o = torch.zeros(ids.shape, device=device)
                lo_o[real] = enc.mlm.log_odds(out[depth][real], t_ids[real])
            # the cells of the batch that hold each source (deletion perturbs only those)
            hold_r, hold_p = np.nonzero(src_index[ids] >= 0)
            present: dict[int, list[int]] = {}
            for r, p in zip(hold_r.tolist(), hold_p.tolist(), strict=True):
                present.setdefault(int(src_index[ids[r, p]]), []).append(r)
            for k, s in enumerate(sources):
                if mode == "delete" and k not in present:
                    continue
                rows = present[k] if mode == "delete" else range(len(cells))
                pert, r_o, p_o, p_p = [], [], [], []
                for r in rows:
                    al = _aligned(cells[r], int(s), mode=mode, skip=skip, max_genes=max_genes)
                    if al is None:
                        continue
                    p_ids, o_pos, q_pos = al
                    r_o.append(np.full(o_pos.size, r))
                    p_o.append(o_pos)
                    p_p.append(np.column_stack([np.full(q_pos.size, len(pert)), q_pos]))
                    pert.append(p_ids)
                if not pert:
                    continue
                res.n_cells[k] += len(pert)
                ids_p, lens_p = _pad(pert, pad)
                t_p, out_p = run(ids_p, lens_p)
                r_o, p_o, p_p = np.concatenate(r_o), np.concatenate(p_o), np.concatenate(p_p)
                tok = ids[r_o, p_o]
                col = tok2col[tok]
                keep = col >= 0
                if not keep.any():
                    continue
                r_o, p_o, p_p, tok, col = r_o[keep], p_o[keep], p_p[keep], tok[keep], col[keep]
                ro_t, po_t = torch.from_numpy(r_o).to(device), torch.from_numpy(p_o).to(device)
                rp_t, pp_t = torch.from_numpy(p_p[:, 0]).to(device), torch.from_numpy(p_p[:, 1]).to(device)
                np.add.at(res.counts[k], col, 1)
                if "embedding" in scores:
                    cos = F.cosine_similarity(out_p[layer_emb].float()[rp_t, pp_t], emb_o[ro_t, po_t], dim=-1)
                    np.add.at(res.sums["embedding"][k], col, (1 - cos).double().cpu().numpy())
                if want_lo:
                    lo_p = enc.mlm.log_odds(out_p[depth][rp_t, pp_t], torch.from_numpy(tok).to(device))
                    np.add.at(res.sums["logodds"][k], col, (lo_p - lo_o[ro_t, po_t]).double().cpu().numpy())
    return res


def scgpt_dependency_sums(
    model: Any,
    cells: Any,
    sources: np.ndarray,
    targets: np.ndarray,
    *,
    value: str = "zero",
    scores: Sequence[str] = ("expression", "embedding"),
    attention_layer: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    show_progress: bool | None = None,
) -> DependencySums:
    """Dependency sums of scGPT: set each source gene's input value to zero (or the top bin), compare every other gene.

    Parameters
    ----------
    model
        A loaded :class:`~scfmkit.models.scgpt.ScGPTModel` (its expression decoder for ``"expression"``).
    cells
        Its :class:`~scfmkit.models.TokenizedCells` (token ids and input values; ``<cls>`` first).
    sources, targets
        Token ids of the source and target genes.
    value
        ``"zero"`` (input value 0, the bin of unexpressed genes) or ``"top"`` (bin ``n_bins - 1``). Only cells whose
        input holds the source are perturbed.
    scores
        ``"expression"``: perturbed minus original prediction of the reference expression decoder for the target;
        ``"embedding"``: ``1 - cos`` of the target's last-layer state.
    attention_layer
        1-based layer whose attention (target query -> source key, head mean) is summed over the unperturbed cells.
    batch_size, device, show_progress
        Cells per forward pass, torch device, progress bar.
    """
    import torch
    import torch.nn.functional as F

    from scfmkit._utils import progress

    unknown = set(scores) - {"expression", "embedding"}
    if unknown or not scores:
        msg = f"scGPT dependency scores are 'expression' and 'embedding', got {list(scores)}."
        raise ValueError(msg)
    if value not in {"zero", "top"}:
        msg = f"scGPT perturbations set the source value to 'zero' or 'top' (the top bin), got {value!r}."
        raise ValueError(msg)
    if "expression" in scores and model.expr_decoder is None:
        msg = (
            f"{model.name}'s checkpoint has no expression decoder (decoder.* weights), needed for the 'expression' "
            "score; use scores=('embedding',)."
        )
        raise ValueError(msg)
    module = model.module
    if attention_layer is not None and not 1 <= attention_layer <= module.cfg.nlayers:
        msg = f"`attention_layer` must be between 1 and {module.cfg.nlayers}, got {attention_layer}."
        raise ValueError(msg)
    new_value = 0.0 if value == "zero" else float(model.n_bins - 1)
    vocab = module.cfg.ntoken
    src_index = _index_of(sources, vocab)
    tok2col = _index_of(targets, vocab)
    res = _new_sums(scores, len(sources), len(targets), attention_layer is not None)
    lengths_all = cells.lengths
    order = np.argsort(-lengths_all, kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def run(tok: np.ndarray, val: np.ndarray, lens: np.ndarray):
        t = torch.from_numpy(tok).to(device)
        n = torch.from_numpy(lens).to(device)
        hidden = module(t, torch.from_numpy(val).to(device), n, cls_only=False).float()
        res.n_forward += 1
        pred = model.expr_decoder(hidden)["pred"].float() if "expression" in scores else None
        return hidden, pred

    with torch.inference_mode():
        for idx in progress(batches, desc="gene dependency", unit="batch", enabled=show_progress):
            lens = lengths_all[idx].astype(np.int64)
            n = int(lens.max())
            tok = np.full((len(idx), n), model.pad_id, np.int64)
            val = np.full((len(idx), n), model.pad_value, np.float32)
            for r, i in enumerate(idx):
                tok[r, : lens[r]] = cells[i]
                val[r, : lens[r]] = cells.values_of(i)
            hid_o, pred_o = run(tok, val, lens)
            if attention_layer is not None:
                attn = module.attention(
                    torch.from_numpy(tok).to(device),
                    torch.from_numpy(val).to(device),
                    torch.from_numpy(lens).to(device),
                    layer=attention_layer,
                )
                _accumulate_attention(res, attn, tok, lens, src_index, tok2col)
            genes = np.where(np.arange(n)[None, :] < lens[:, None], tok, -1)
            genes[:, 0] = -1  # <cls>
            for k, s in enumerate(sources):
                rows, pos = np.nonzero(genes == s)
                if rows.size == 0:
                    continue
                res.n_cells[k] += rows.size
                v = val[rows].copy()
                v[np.arange(rows.size), pos] = new_value
                hid_p, pred_p = run(tok[rows], v, lens[rows])
                # every other gene of those cells: same positions in both inputs
                sub = genes[rows]
                rr, pp = np.nonzero((sub >= 0) & (sub != s))
                col = tok2col[sub[rr, pp]]
                keep = col >= 0
                rr, pp, col = rr[keep], pp[keep], col[keep]
                if rr.size == 0:
                    continue
                np.add.at(res.counts[k], col, 1)
                rp_t, pp_t = torch.from_numpy(rr).to(device), torch.from_numpy(pp).to(device)
                ro_t = torch.from_numpy(rows[rr]).to(device)
                if "embedding" in scores:
                    cos = F.cosine_similarity(hid_p[rp_t, pp_t], hid_o[ro_t, pp_t], dim=-1)
                    np.add.at(res.sums["embedding"][k], col, (1 - cos).double().cpu().numpy())
                if "expression" in scores:
                    diff = pred_p[rp_t, pp_t] - pred_o[ro_t, pp_t]
                    np.add.at(res.sums["expression"][k], col, diff.double().cpu().numpy())
    return res


def spearman_columns(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Spearman correlation of the columns ``rows`` of ``X`` (cells x genes, dense) with every column.

    Ranks with ties averaged (as :func:`scipy.stats.spearmanr`); NaN for constant columns.
    """
    from scipy.stats import rankdata

    R = rankdata(np.asarray(X, np.float64), axis=0)
    R -= R.mean(0)
    norm = np.sqrt((R**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        R /= norm
    R[:, norm == 0] = np.nan
    return R[:, rows].T @ R


def implied_effects(predictors: Any, sources: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """The change of each target predicted by fitted perturbation predictors for perturbing each source alone.

    ``predictor.predict([source]) - control mean`` (e.g. the linear model of Ahlmann-Eltze et al.:
    ``G W p_source + b``), on the targets the predictor measured. Held out by construction: a source is predicted
    by the first of ``predictors`` (one or a list, e.g. the folds of a cross-fit) that did not see it perturbed in
    training and can predict it; NaN where none can, or for a target no predictor measures.
    """
    import pandas as pd

    if not isinstance(predictors, list | tuple):
        predictors = [predictors]
    out = np.full((len(sources), len(targets)), np.nan)
    for r, s in enumerate(sources):
        for pred in predictors:
            seen = {g for genes in pred.train_genes for g in genes}
            if str(s) in seen or pred.why_not(str(s)) is not None:
                continue
            cols = pd.Index(pred.var_names).get_indexer(pd.Index(targets))
            ok = np.flatnonzero(cols >= 0)
            delta = pred.predict([str(s)]).to_numpy(np.float64)[0] - np.asarray(pred.ctrl)
            out[r, ok] = delta[cols[ok]]
            break
    return out
