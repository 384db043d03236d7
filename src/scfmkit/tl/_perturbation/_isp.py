"""Geneformer in-silico perturbation: embedding shifts of deleting or overexpressing genes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scfmkit._labels import obs_strings
from scfmkit._random import as_generator
from scfmkit._utils import get_modality, logger, progress, sanitize_params

from ._isp_compare import cell_embeddings, compare_pairs, perturb_pair

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["geneformer_perturb"]


def _check_layer_pooling(fm_model: Any, emb_layer: int, pooling: str) -> None:
    if not -fm_model.n_layers <= emb_layer <= 0:
        msg = f"`emb_layer` must be between {-fm_model.n_layers} and 0, got {emb_layer}."
        raise ValueError(msg)
    if pooling not in {"mean", "cls"} or (pooling == "cls" and not fm_model.vocab.special_tokens):
        msg = f"`pooling` must be 'mean' (or 'cls' for Geneformer V2), got {pooling!r}."
        raise ValueError(msg)


def _null_targets(
    cell: np.ndarray, targets: Sequence[int], *, skip: int, window: int, pool: np.ndarray, gen: np.random.Generator
) -> list[int] | None:
    """Random stand-ins for ``targets`` in one cell (``None`` if none can be drawn).

    An expressed target gets a gene of the cell within ``window`` rank positions; an absent one (overexpression by
    insertion) a random gene of ``pool`` that the cell does not express.
    """
    body = cell[skip : len(cell) - skip]
    taken = set(np.flatnonzero(np.isin(body, targets)).tolist())
    out: list[int] = []
    for t in targets:
        pos = np.flatnonzero(body == t)
        if pos.size:
            p = int(pos[0])
            cand = [q for q in range(max(0, p - window), min(len(body), p + window + 1)) if q not in taken]
            if not cand:
                return None
            q = int(gen.choice(cand))
            taken.add(q)
            out.append(int(body[q]))
        else:
            absent = pool[~np.isin(pool, body) & ~np.isin(pool, out) & ~np.isin(pool, targets)]
            if absent.size == 0:
                return None
            out.append(int(gen.choice(absent)))
    return out


def _perturb_each_gene(
    adata,
    fm_model,
    target,
    *,
    emb_layer,
    pooling,
    comparison,
    batch_size,
    device,
    layer,
    gene_key,
    input,
    mod,
    key_added,
    copy,
):
    """``genes="all"``: every gene of every cell deleted alone (see :func:`geneformer_perturb`)."""
    from scfmkit._settings import settings
    from scfmkit._utils import write_back

    from ._isp_all import delete_each_gene

    _check_layer_pooling(fm_model, emb_layer, pooling)
    tokens, coverage = fm_model.tokenize(target, layer=layer, gene_key=gene_key, input=input)
    long, summary = delete_each_gene(
        fm_model,
        [tokens[i] for i in range(target.n_obs)],
        list(target.obs_names),
        emb_layer=emb_layer,
        pooling=pooling,
        comparison=comparison,
        batch_size=batch_size or settings.batch_size,
        device=settings.resolve_device(device or getattr(fm_model, "device", None)),
    )
    data = adata.copy() if copy else adata
    tgt = get_modality(data, mod)
    params = {
        **fm_model.base_params,
        "genes": "all",
        "mode": "delete",
        "emb_layer": emb_layer,
        "pooling": pooling,
        "comparison": comparison,
        "input": input,
        "gene_coverage": coverage.get("frac_vars_matched"),
        "expression_predictions": False,
    }
    tgt.uns[key_added] = {"params": sanitize_params(params), "deletions": long, "gene_deletion": summary}
    write_back(data, mod)
    logger.info("In-silico deletion of each gene: %d deletions in %d cells", len(long), target.n_obs)
    return data if copy else None


def geneformer_perturb(
    adata: AnnData | MuData,
    model: Any = "geneformer-v1",
    *,
    genes: str | Sequence[str],
    mode: str = "delete",
    goal_key: str | None = None,
    goal: str | None = None,
    start: str | None = None,
    n_null: int = 10,
    null_window: int = 5,
    weights: str = "pretrained",
    layer: str | None = None,
    gene_key: str | None = None,
    input: str = "counts",
    emb_layer: int = -1,
    pooling: str = "mean",
    comparison: str = "genes",
    gene_shifts: bool = False,
    batch_size: int | None = None,
    device: str | None = None,
    rng: int | np.random.Generator | None = 0,
    mod: str | None = "rna",
    key_added: str = "geneformer_perturb",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Geneformer in-silico perturbation: how far deleting or overexpressing genes moves each cell's embedding.

    ``mode="delete"`` removes the genes' tokens from each cell's rank-value encoding (cells that express none of them
    are not perturbed); ``mode="overexpress"`` moves them to the front of the encoding (right after ``<cls>`` in
    Geneformer V2), inserting them where the cell does not express them, and truncates to the input size. The genes
    are perturbed together; deletion needs cells that express all of them (as in Geneformer's InSilicoPerturber).

    What is compared is what the reference ``InSilicoPerturber`` (``perturb_group`` mode) compares: each gene that
    was not perturbed, in the perturbed cell and in the original, at the same layer. The perturbed genes are left
    out of both sides. When overexpression pushes genes off the end of the encoding, the original is truncated by
    the same number of genes (before ``<eos>``) and re-embedded, so that both cells lack the same genes. The cell
    value ``cos`` is then, with ``pooling="mean"`` (Geneformer V1, ``emb_mode="cell"``), the mean over the compared
    genes of each gene's cosine between its original and perturbed embedding; with ``pooling="cls"`` (V2,
    ``emb_mode="cls"``) the cosine of the two ``<cls>`` embeddings. (V2 with ``pooling="mean"`` applies the V1 rule
    to its gene positions; the reference has no such mode.) ``comparison="pooled"`` instead gives the cosine of the
    two embeddings mean-pooled over the compared genes (this package's earlier rule; not the reference's). With a
    goal state, as in the reference, both cells are pooled over all their positions (perturbed genes included; in V2
    the ``<cls>`` embedding) and the shift toward the goal cells' mean embedding is
    ``cos(perturbed, goal) - cos(original, goal)``. ``gene_shifts=True`` also reports, per affected gene, the mean
    over cells of its cosine (the reference's ``cell_and_gene`` gene dictionary).

    The null repeats the same perturbation ``n_null`` times with random stand-in genes of matched expression rank:
    for an expressed target, a random gene of the same cell within ``null_window`` rank positions; for an inserted
    (non-expressed) one, a random matched gene of ``adata`` that the cell does not express.

    This method gives no expression-space predictions (no predicted pseudobulk, nothing for
    :func:`scfmkit.metrics.perturbation_metrics`): it measures embedding shifts only. For expression predictions with
    Geneformer, use its token embeddings in the linear model (:func:`predict_perturbation` with ``method="linear"``
    and ``gene_embedding=<model>``).

    Parameters
    ----------
    adata
        Cells x genes, raw counts (or log1p-normalised with ``input="lognorm"``). A MuData is used through ``mod``.
    model
        Geneformer registry name, checkpoint directory or loaded :class:`~scfmkit.models.FoundationModel`.
    genes
        Gene(s) to perturb together (symbols or Ensembl ids, as the model's dictionaries know them), or ``"all"``:
        each gene of each cell deleted on its own (the reference's ``genes_to_perturb="all"``; ``mode="delete"``,
        no goal state, no null). That writes only ``uns['<key_added>']``: ``deletions`` (one row per cell and
        deleted gene: ``cell``, ``gene_id``, ``token``, ``cos``, the cell value as above), ``gene_deletion`` (per
        deleted gene: ``token``, ``mean_cos``, ``n_cells``) and ``params``. Each position of the cell's genes is
        deleted once (a repeated token once per entry); ``<cls>``/``<eos>`` (V2) are never deleted and, with
        ``pooling="cls"``, the value is the ``<cls>`` cosine, as the reference's ``isp_perturb_all_special``.
    mode
        ``"delete"`` or ``"overexpress"``.
    goal_key, goal
        ``obs`` column and value of the goal state (optional). Cells with no value (NaN) are neither goal nor start.
    start
        Value of ``obs[goal_key]`` of the cells to perturb (default: every cell not in the goal state; without a
        goal, every cell).
    n_null
        Repeats of the random-gene null (0 for none).
    null_window
        Rank positions around an expressed target from which its null stand-in is drawn.
    comparison
        ``"genes"`` (the reference's rule, default) or ``"pooled"`` (cosine of the mean-pooled embeddings), see above;
        ignored with ``pooling="cls"``.
    gene_shifts
        Also write the per-gene cosines (``uns['<key_added>']['gene_cos']``).
    weights, layer, gene_key, input, emb_layer, pooling, batch_size, device
        As in :func:`scfmkit.tl.embed`.
    rng
        Seed or generator of the null. ``rng=None`` draws fresh (unseeded) randomness; the default 0 makes runs
        reproducible.
    mod
        Modality of a MuData.
    key_added
        Prefix of the keys written.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy. Writes (NaN for cells that were not perturbed)

    - ``obs['<key_added>_cos']``: the cell value (see above: mean gene cosine, or ``<cls>`` cosine);
    - ``obs['<key_added>_shift']``: ``1 - cos``; ``obs['<key_added>_null_shift']``: its mean over the null repeats;
    - with a goal: ``obs['<key_added>_goal_shift']`` and ``obs['<key_added>_null_goal_shift']``;
    - ``obsm['X_<key_added>']``: the perturbed embeddings (float32; mean over the genes that were not perturbed);
    - ``uns['<key_added>']``: ``params`` and ``summary`` (cells perturbed, mean shifts, null means and empirical
      p-values ``(1 + #null repeats with a mean at least as large) / (1 + n_null)``); with ``gene_shifts=True``
      also ``gene_cos``: a DataFrame indexed by the affected genes' ids (``token``, ``mean_cos``, ``n_cells``).
    """
    from scfmkit import models
    from scfmkit._settings import settings
    from scfmkit._utils import write_back

    if mode not in {"delete", "overexpress"}:
        msg = f"`mode` must be 'delete' or 'overexpress', got {mode!r}."
        raise ValueError(msg)
    if comparison not in {"genes", "pooled"}:
        msg = f"`comparison` must be 'genes' (as Geneformer's InSilicoPerturber) or 'pooled', got {comparison!r}."
        raise ValueError(msg)
    if n_null < 0 or null_window < 1:
        msg = f"Need `n_null >= 0` and `null_window >= 1`, got {n_null} and {null_window}."
        raise ValueError(msg)
    each_gene = isinstance(genes, str) and genes == "all"
    if each_gene and (mode != "delete" or goal_key is not None):
        msg = "`genes='all'` (each gene deleted alone) needs `mode='delete'` and no goal state."
        raise ValueError(msg)
    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not genes:
        msg = "Pass at least one gene in `genes=`."
        raise ValueError(msg)
    target = get_modality(adata, mod)
    if (goal_key is None) != (goal is None):
        msg = "Pass both `goal_key` and `goal` (or neither)."
        raise ValueError(msg)
    if goal_key is not None:
        if goal_key not in target.obs:
            msg = f"`goal_key={goal_key!r}` is not an obs column; available: {list(target.obs.columns)}."
            raise KeyError(msg)
        known = target.obs[goal_key].notna().to_numpy()  # cells without a state are neither goal nor start
        states = obs_strings(target.obs, goal_key, what="goal_key", fill="")
        is_goal = known & (states == str(goal))
        if not is_goal.any():
            msg = f"No cell has obs[{goal_key!r}] == {goal!r}; values: {sorted(set(states[known]))[:10]}."
            raise ValueError(msg)
        is_start = known & ((states == str(start)) if start is not None else ~is_goal)
        if not is_start.any():
            msg = f"No start cells (obs[{goal_key!r}] == {start!r})."
            raise ValueError(msg)
    else:
        if start is not None:
            msg = "`start` needs `goal_key`/`goal`."
            raise ValueError(msg)
        is_goal = np.zeros(target.n_obs, bool)
        is_start = np.ones(target.n_obs, bool)
    fm_model = models.load(model, weights=weights, device=device)
    fm_model.require("in_silico_perturbation", what="geneformer_perturb")
    if each_gene:
        return _perturb_each_gene(
            adata,
            fm_model,
            target,
            emb_layer=emb_layer,
            pooling=pooling,
            comparison=comparison,
            batch_size=batch_size,
            device=device,
            layer=layer,
            gene_key=gene_key,
            input=input,
            mod=mod,
            key_added=key_added,
            copy=copy,
        )
    match = fm_model.match_genes(genes)
    missing = [g for g, c in zip(genes, match.column, strict=True) if c < 0]
    if missing:
        msg = f"Genes {missing} are not in {fm_model.name}'s dictionaries; check the names (symbols or Ensembl ids)."
        raise ValueError(msg)
    target_tokens = [int(match.token_ids[c]) for c in match.column]
    _check_layer_pooling(fm_model, emb_layer, pooling)
    gen = as_generator(rng)

    use = is_goal | is_start
    rows = np.flatnonzero(use)
    tokens, coverage = fm_model.tokenize(target[rows], layer=layer, gene_key=gene_key, input=input)
    skip = 1 if fm_model.vocab.special_tokens else 0
    start_local = np.flatnonzero(is_start[rows])
    bs = batch_size or settings.batch_size
    dev = settings.resolve_device(device or getattr(fm_model, "device", None))
    goal_mean = None
    if goal_key is not None:
        goal_local = np.flatnonzero(is_goal[rows])
        goal_emb = cell_embeddings(
            fm_model, [tokens[i] for i in goal_local], emb_layer=emb_layer, pooling=pooling, batch_size=bs, device=dev
        )
        goal_mean = goal_emb.mean(0)

    def _run(target_ids_per_cell: Sequence[Sequence[int] | None], cells_local: np.ndarray, stats=None):
        """Perturb, then compare each perturbed cell with its original as the reference does."""
        pairs, ok = [], []
        for j, (i, targets) in enumerate(zip(cells_local, target_ids_per_cell, strict=True)):
            res = (
                None
                if targets is None
                else perturb_pair(tokens[i], targets, mode=mode, skip=skip, max_len=fm_model.input_size)
            )
            if res is not None:
                pairs.append(res)
                ok.append(j)
        if not ok:
            return np.zeros(0, int), None
        out = compare_pairs(
            fm_model,
            pairs,
            emb_layer=emb_layer,
            pooling=pooling,
            comparison=comparison,
            batch_size=bs,
            device=dev,
            goal=goal_mean,
            gene_stats=stats,
        )
        return np.asarray(ok), out

    gene_stats: dict[int, list[float]] | None = {} if gene_shifts else None
    ok, res = _run([target_tokens] * len(start_local), start_local, gene_stats)
    if len(ok) == 0:
        msg = (
            f"None of the start cells express all of {genes}; nothing to delete "
            "(Geneformer deletes only in cells that express every gene; `mode='overexpress'` inserts)."
        )
        raise ValueError(msg)
    pert_local = start_local[ok]
    cos, pert = res["cos"], res["emb"]
    goal_shift = res["goal_shift"] if goal_mean is not None else None

    var_genes = target.var_names if gene_key is None else target.var[gene_key].astype(str)
    pool = np.asarray(fm_model.match_genes(var_genes).token_ids)
    null_shift = np.full((len(pert_local), n_null), np.nan)
    null_goal = np.full((len(pert_local), n_null), np.nan)
    for r in progress(range(n_null), desc="null repeats", unit="repeat"):
        stand_ins = [
            _null_targets(tokens[i], target_tokens, skip=skip, window=null_window, pool=pool, gen=gen)
            for i in pert_local
        ]
        ok_null, res_null = _run(stand_ins, pert_local)
        if len(ok_null) == 0:
            continue
        null_shift[ok_null, r] = 1 - res_null["cos"]
        if goal_mean is not None:
            null_goal[ok_null, r] = res_null["goal_shift"]

    def _p(observed: np.ndarray, null: np.ndarray) -> float:
        if null.shape[1] == 0:
            return float("nan")
        means = np.nanmean(null, axis=0)
        means = means[np.isfinite(means)]
        return float((1 + (means >= np.nanmean(observed)).sum()) / (1 + len(means)))

    shift = 1 - cos
    summary: dict[str, Any] = {
        "n_cells_perturbed": len(pert_local),
        "n_start_cells": int(is_start.sum()),
        "mean_shift": float(np.mean(shift)),
        "null_mean_shift": float(np.nanmean(null_shift)) if n_null else float("nan"),
        "p_shift": _p(shift, null_shift),
    }
    if goal_shift is not None:
        summary |= {
            "mean_goal_shift": float(np.mean(goal_shift)),
            "null_mean_goal_shift": float(np.nanmean(null_goal)) if n_null else float("nan"),
            "p_goal_shift": _p(goal_shift, null_goal),
        }

    data = adata.copy() if copy else adata
    tgt = get_modality(data, mod)
    cell_rows = rows[pert_local]

    def _col(values: np.ndarray) -> np.ndarray:
        out = np.full(tgt.n_obs, np.nan)
        out[cell_rows] = values
        return out

    tgt.obs[f"{key_added}_cos"] = _col(cos)
    tgt.obs[f"{key_added}_shift"] = _col(shift)
    tgt.obs[f"{key_added}_null_shift"] = _col(np.nanmean(null_shift, axis=1) if n_null else np.full(len(cos), np.nan))
    if goal_shift is not None:
        tgt.obs[f"{key_added}_goal_shift"] = _col(goal_shift)
        tgt.obs[f"{key_added}_null_goal_shift"] = _col(
            np.nanmean(null_goal, axis=1) if n_null else np.full(len(cos), np.nan)
        )
    emb_out = np.full((tgt.n_obs, pert.shape[1]), np.nan, np.float32)
    emb_out[cell_rows] = pert
    tgt.obsm[f"X_{key_added}"] = emb_out
    params = {
        **fm_model.base_params,
        "genes": genes,
        "mode": mode,
        "goal_key": goal_key,
        "goal": goal,
        "start": start,
        "n_null": n_null,
        "null_window": null_window,
        "emb_layer": emb_layer,
        "pooling": pooling,
        "comparison": comparison,
        "gene_shifts": gene_shifts,
        "input": input,
        "rng": rng if isinstance(rng, int | None) else "Generator",
        "gene_coverage": coverage.get("frac_vars_matched"),
        "expression_predictions": False,
    }
    tgt.uns[key_added] = {"params": sanitize_params(params), "summary": sanitize_params(summary)}
    if gene_stats is not None:
        inv = {int(t): str(g) for g, t in fm_model.vocab.token_dict.items()}
        affected = np.array(sorted(gene_stats), dtype=np.int64)
        tgt.uns[key_added]["gene_cos"] = pd.DataFrame(
            {
                "token": affected,
                "mean_cos": [float(np.mean(gene_stats[t])) for t in affected.tolist()],
                "n_cells": [len(gene_stats[t]) for t in affected.tolist()],
            },
            index=pd.Index([inv.get(t, str(t)) for t in affected.tolist()], name="gene_id"),
        )
    write_back(data, mod, obsm_keys=[f"X_{key_added}"])
    logger.info(
        "In-silico %s of %s in %d cells: mean shift %.4g (null %.4g, p=%.3g)",
        mode,
        genes,
        len(pert_local),
        summary["mean_shift"],
        summary["null_mean_shift"],
        summary["p_shift"],
    )
    return data if copy else None
