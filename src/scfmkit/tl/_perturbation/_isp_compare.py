"""Kernels of Geneformer's in-silico perturbation as its ``InSilicoPerturber`` computes it (token ids and torch).

The reference (``in_silico_perturber.py`` / ``perturber_utils.py`` of Geneformer) perturbs a cell's rank-value
encoding, re-embeds it, and compares each gene that was not perturbed with the same gene in the original cell:

- ``delete``: the first occurrence of each target is removed; the original's remaining genes (in order) are compared
  with the perturbed cell's genes, position by position.
- ``overexpress``: the targets the cell expresses are removed, then all targets are put at the front (after
  ``<cls>``), and the result truncated to the model's input size (``<eos>`` kept). When that pushes genes off the
  end (``n_overflow = length + #inserted - input size > 0``), the original is truncated by ``n_overflow`` genes too
  (before ``<eos>``) and *re-embedded*, so that both sides lack the same genes. The targets are left out of both
  sides.
- The cell value (no goal state) is, in Geneformer V1 (no ``<cls>``), the mean over the compared genes of each
  gene's cosine between its original and perturbed embedding; in V2 (``emb_mode="cls"``) the cosine of the two
  ``<cls>`` embeddings.
- With goal states the cell embeddings are mean-pooled over *all* positions (perturbed genes included) -- in V2 the
  ``<cls>`` embedding -- and the shift is ``cos(perturbed, goal) - cos(original, goal)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Pair:
    """One perturbed cell and the original it is compared with (token ids, special tokens included)."""

    perturbed: np.ndarray
    original: np.ndarray
    pert_keep: np.ndarray  # positions of ``perturbed`` that are compared, in order
    orig_keep: np.ndarray  # the positions of ``original`` they are compared with


def perturb_pair(cell: np.ndarray, targets: Sequence[int], *, mode: str, skip: int, max_len: int) -> Pair | None:
    """Perturb one cell's ids as the reference does (``max_len``: the model's input size, special tokens included).

    ``None`` when ``mode="delete"`` and the cell does not express every target, or no gene would be left to compare.
    """
    cell = np.asarray(cell, dtype=np.int64)
    n = len(cell)
    body = cell[skip : n - skip]
    first = {}
    for t in targets:
        hit = np.flatnonzero(body == t)
        if hit.size:
            first[int(t)] = skip + int(hit[0])
    present = sorted(set(first.values()))
    if mode == "delete":
        if len(first) < len({int(t) for t in targets}):
            return None
        pert = np.delete(cell, present)
        original = cell
        orig_keep = np.setdiff1d(np.arange(skip, n - skip), present)
        pert_keep = np.arange(skip, len(pert) - skip)
    else:
        k = len(targets)
        rest = np.delete(cell, present)
        pert = np.concatenate([rest[:skip], np.asarray(targets, np.int64), rest[skip:]])
        if len(pert) > max_len:
            pert = np.concatenate([pert[: max_len - 1], pert[-1:]]) if skip else pert[:max_len]
        n_overflow = n + (k - len(present)) - max_len
        original = cell
        if n_overflow > 0:
            keep_len = n - n_overflow
            original = np.concatenate([cell[: keep_len - 1], cell[-1:]]) if skip else cell[:keep_len]
        m = len(original)
        orig_keep = np.setdiff1d(np.arange(skip, m - skip), present)
        pert_keep = np.arange(skip + k, len(pert) - skip)
    size = min(len(orig_keep), len(pert_keep))
    if size == 0:
        return None
    return Pair(pert, original, pert_keep[:size], orig_keep[:size])


def _cos(a: Any, b: Any) -> Any:
    """Cosine along the last axis, as ``torch.nn.CosineSimilarity`` (float32, eps 1e-8)."""
    import torch

    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)


def compare_pairs(
    fm_model: Any,
    pairs: Sequence[Pair],
    *,
    emb_layer: int,
    pooling: str,
    comparison: str,
    batch_size: int,
    device: str,
    goal: np.ndarray | None = None,
    gene_stats: dict[int, list[float]] | None = None,
) -> dict[str, np.ndarray]:
    """Embed each pair's cells and compare them as the reference does.

    Returns ``cos`` (the cell value: mean gene cosine, ``<cls>`` cosine or, with ``comparison="pooled"``, the cosine
    of the two mean-pooled embeddings over the compared genes), ``emb`` and ``orig_emb`` (the perturbed and the
    original cell's embedding: ``<cls>``, or the mean over the compared genes) and with ``goal`` the ``goal_shift``.
    ``gene_stats`` (token -> list), if given, receives each compared gene's cosine.
    """
    import torch

    special = bool(fm_model.vocab.special_tokens)
    enc = fm_model.encoder(fm_model.n_layers + emb_layer, device)
    pad = fm_model.vocab.pad_id
    skip = 1 if special else 0
    n = len(pairs)
    out = {
        "cos": np.full(n, np.nan),
        "emb": np.full((n, fm_model.config.hidden_size), np.nan, np.float32),
        "orig_emb": np.full((n, fm_model.config.hidden_size), np.nan, np.float32),
        "goal_shift": np.full(n, np.nan),
    }
    goal_t = None if goal is None else torch.as_tensor(np.asarray(goal, np.float32), device=device)

    def _forward(cells: list[np.ndarray]) -> Any:
        lengths = np.array([len(c) for c in cells], dtype=np.int64)
        ids = np.full((len(cells), int(lengths.max())), pad, np.int64)
        for r, c in enumerate(cells):
            ids[r, : len(c)] = c
        return enc(torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)).float()

    def _cell_emb(h: Any, length: int) -> Any:
        """Cell embedding of the goal comparison: ``<cls>``, or the mean over every gene position."""
        if pooling == "cls":
            return h[0]
        return h[skip : length - skip].mean(0)

    order = np.argsort(-np.array([len(p.perturbed) for p in pairs]), kind="stable")
    with torch.inference_mode():
        for b in range(0, n, batch_size):
            idx = order[b : b + batch_size]
            hp = _forward([pairs[i].perturbed for i in idx])
            first = pairs[idx[0]].original
            if all(pairs[i].original is first for i in idx):  # one cell perturbed many ways: embed it once
                ho = _forward([first]).expand(len(idx), -1, -1)
            else:
                ho = _forward([pairs[i].original for i in idx])
            for r, i in enumerate(idx):
                p = pairs[i]
                gp = hp[r, torch.from_numpy(p.pert_keep).to(device)]
                go = ho[r, torch.from_numpy(p.orig_keep).to(device)]
                gene_cos = _cos(gp, go)
                if pooling == "cls":
                    out["cos"][i] = float(_cos(hp[r, 0], ho[r, 0]))
                    out["emb"][i] = hp[r, 0].cpu().numpy()
                    out["orig_emb"][i] = ho[r, 0].cpu().numpy()
                elif comparison == "pooled":
                    out["cos"][i] = float(_cos(gp.mean(0), go.mean(0)))
                    out["emb"][i] = gp.mean(0).cpu().numpy()
                    out["orig_emb"][i] = go.mean(0).cpu().numpy()
                else:
                    out["cos"][i] = float(gene_cos.mean())
                    out["emb"][i] = gp.mean(0).cpu().numpy()
                    out["orig_emb"][i] = go.mean(0).cpu().numpy()
                if goal_t is not None:
                    ep = _cell_emb(hp[r], len(p.perturbed))
                    eo = _cell_emb(ho[r], len(p.original))
                    out["goal_shift"][i] = float(_cos(ep, goal_t) - _cos(eo, goal_t))
                if gene_stats is not None:
                    for t, c in zip(p.original[p.orig_keep].tolist(), gene_cos.cpu().numpy().tolist(), strict=True):
                        gene_stats.setdefault(int(t), []).append(float(c))
    return out


def cell_embeddings(
    fm_model: Any, cells: Sequence[np.ndarray], *, emb_layer: int, pooling: str, batch_size: int, device: str
) -> np.ndarray:
    """Whole-cell embeddings as the reference's ``get_embs`` gives them for the goal states.

    ``<cls>`` (``emb_mode="cls"``), or the mean over every gene position (``"cell"``; ``<cls>``/``<eos>`` left out).
    """
    import torch

    special = bool(fm_model.vocab.special_tokens)
    skip = 1 if special else 0
    enc = fm_model.encoder(fm_model.n_layers + emb_layer, device)
    pad = fm_model.vocab.pad_id
    out = np.empty((len(cells), fm_model.config.hidden_size), np.float32)
    with torch.inference_mode():
        for b in range(0, len(cells), batch_size):
            chunk = cells[b : b + batch_size]
            lengths = np.array([len(c) for c in chunk], dtype=np.int64)
            ids = np.full((len(chunk), int(lengths.max())), pad, np.int64)
            for r, c in enumerate(chunk):
                ids[r, : len(c)] = c
            h = enc(torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)).float()
            for r, c in enumerate(chunk):
                out[b + r] = (h[r, 0] if pooling == "cls" else h[r, skip : len(c) - skip].mean(0)).cpu().numpy()
    return out
