"""Gene dependency maps: how perturbing gene i in silico changes the model's view of gene j, beside baselines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from scfmkit._utils import get_matrix, get_modality, logger, sanitize_params

from ._dependency_kernels import (
    DependencySums,
    geneformer_dependency_sums,
    implied_effects,
    scgpt_dependency_sums,
    spearman_columns,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["gene_dependency"]

#: scores each family computes (the first is the default ``score``)
SCORES = {"geneformer": ("embedding", "logodds"), "scgpt": ("expression", "embedding")}
BASELINES = ("coexpression", "random", "attention")
MAX_VARS = 10_000


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        msg = f"`{name}` must be one of {list(allowed)}, got {value!r}."
        raise ValueError(msg)


def _run_kernel(
    fm_model: Any,
    cells: Any,
    src_tok: np.ndarray,
    tgt_tok: np.ndarray,
    *,
    perturbation: str,
    scores: Sequence[str],
    attention_layer: int | None,
    emb_layer: int,
    batch_size: int,
    device: str,
) -> DependencySums:
    kw = {"attention_layer": attention_layer, "batch_size": batch_size, "device": device, "scores": scores}
    if fm_model.family == "geneformer":
        return geneformer_dependency_sums(
            fm_model, cells, src_tok, tgt_tok, mode=perturbation, emb_layer=emb_layer, **kw
        )
    value = "zero" if perturbation == "delete" else "top"
    return scgpt_dependency_sums(fm_model, cells, src_tok, tgt_tok, value=value, **kw)


def _tokenize(fm_model: Any, sub: AnnData, *, layer: str | None, gene_key: str | None, input: str, seed: int):
    if fm_model.family == "geneformer":
        return fm_model.tokenize(sub, layer=layer, gene_key=gene_key, input=input)[0]
    return fm_model.tokenize(sub, layer=layer, gene_key=gene_key, rng=seed)[0]


def gene_dependency(
    adata: AnnData | MuData,
    model: Any = "geneformer-v1",
    *,
    genes: str | Sequence[str] | None = None,
    n_genes: int = 10,
    perturbation: str = "delete",
    score: str | None = None,
    scores: Sequence[str] | None = None,
    weights: str = "pretrained",
    baselines: Sequence[str] = BASELINES,
    predictor: Any = None,
    random_seed: int = 0,
    attention_layer: int | None = None,
    emb_layer: int = -1,
    layer: str | None = None,
    gene_key: str | None = None,
    input: str = "counts",
    max_cells: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    n_top: int = 20,
    rng: int | np.random.Generator | None = 0,
    mod: str | None = "rna",
    key_added: str | None = None,
    inplace: bool = True,
) -> pd.DataFrame:
    """Gene dependency map: the effect on the model's view of each gene j of perturbing a source gene i in silico.

    The single-cell version of nucleotide dependency maps (Tomaz da Silva et al., Nat Genet 2025): perturb one
    input gene, read how the model's output changes at every other gene, average over the cells that express both.

    - Geneformer: ``perturbation="delete"`` removes i from each cell's rank-value encoding (cells expressing i),
      ``"overexpress"`` moves or inserts it at the front and truncates the end (every cell), exactly as Geneformer's
      ``InSilicoPerturber``. Scores: ``"embedding"``, ``1 - cos`` between j's contextual embedding (layer
      ``emb_layer``) in the perturbed and the original cell (the per-gene cosine similarities of the reference with
      ``emb_mode="cell_and_gene"``); ``"logodds"``, perturbed minus original masked-LM log-odds ``log p/(1-p)`` of
      token j at its position (the direct analogue of the nucleotide dependency score; j is read unmasked).
    - scGPT: ``"delete"`` sets i's input value to 0 (the bin of unexpressed genes), ``"overexpress"`` to the top
      bin ``n_bins - 1``, in the cells whose input holds i. Scores: ``"expression"``, perturbed minus original
      prediction of the checkpoint's expression decoder (the reference ``ExprDecoder``) for j; ``"embedding"``,
      ``1 - cos`` of j's last-layer state.

    Baselines in the same result (``baselines``): ``"coexpression"``, Spearman correlation of i and j across the
    same cells; ``"random"``, the same map from the random-weight model of the same architecture and vocabulary
    (seed ``random_seed``; the next seed when the model itself is that random model); ``"attention"``, the
    attention-derived network (the weight of target j's query on source i's key in layer ``attention_layer``,
    averaged over heads and over the unperturbed cells holding both); and with ``predictor`` (fitted
    :class:`~scfmkit.tl.PerturbationPredictor` folds, e.g. ``fm.tl.fit_predictor(pseudobulk, method="linear")``)
    the change of j it predicts for perturbing i, from a fold that did not train on i.

    Cost: one forward pass of every batch of cells unperturbed plus, per source gene, one forward pass of the cells
    of each batch in which it is perturbed: ``n_cells / batch_size * (1 + n_sources)`` passes at most (twice that
    with the ``"random"`` baseline). The Geneformer ``"logodds"`` score adds the MLM head (``vocab x hidden`` per
    compared gene) to every pass.

    Parameters
    ----------
    adata
        Cells x genes: raw counts for Geneformer (or ``input="lognorm"``), any non-negative values for scGPT. A
        MuData is read through ``mod``. At most 10,000 genes (the maps are dense genes x genes): subset first,
        e.g. to highly variable genes.
    model
        Registry name, checkpoint directory or loaded :class:`~scfmkit.models.FoundationModel` with the
        ``"gene_dependency"`` capability.
    genes
        Source genes (names as in ``var_names`` or ``var[gene_key]``). Default: the ``n_genes`` matched genes with
        the highest mean value across the cells used.
    n_genes
        Number of default source genes.
    perturbation
        ``"delete"`` or ``"overexpress"`` (see above).
    score
        Which score goes to ``varp['<key>']`` (default: ``"embedding"`` for Geneformer, ``"expression"`` for
        scGPT); the other one goes to ``varp['<key>_<score>']``.
    scores
        The scores to compute (default both of the family; ``score`` is always computed). Geneformer's
        ``"logodds"`` is the expensive one (the MLM head over the whole vocabulary at every compared gene).
    weights
        ``"pretrained"`` or ``"random"`` when ``model`` is a name or folder.
    baselines
        Any of ``"coexpression"``, ``"random"``, ``"attention"``.
    predictor
        Fitted perturbation predictor(s) whose implied effects are added (``varp['<key>_<predictor.name>']``),
        held out: each source is predicted by the first predictor (e.g. one per cross-fitting fold) that was not
        trained on it (NaN where none).
    random_seed
        Seed of the random-weight baseline model.
    attention_layer
        1-based layer of the attention network (default: the last).
    emb_layer
        Geneformer layer of the contextual gene embeddings (-1: second to last, as ``EmbExtractor``).
    layer, gene_key, input
        Where the values and gene names are; Geneformer's input kind (``"counts"`` or ``"lognorm"``).
    max_cells
        Use at most this many cells (drawn with ``rng``); default all.
    batch_size, device
        Cells per forward pass; torch device.
    n_top
        Strongest targets per source in the returned table.
    rng
        Seed or generator for the cell subsample and scGPT's tokenisation.
    mod
        Modality of a MuData.
    key_added
        Key of the results (default ``'<family>_dependency'``).
    inplace
        Write the maps into ``adata`` (default). ``False`` writes nothing and returns the table only (as scanpy's
        functions that return values).

    Returns
    -------
    A tidy DataFrame of the ``n_top`` strongest edges per source (by ``|score|``): ``source``, ``target``,
    ``score``, the other score, the baselines and ``n_cells`` (cells that express both). With ``inplace`` writes
    into ``adata``
    (float32 ``n_vars x n_vars`` matrices, rows = sources, NaN for genes that are not sources, that never share a
    cell with the source, or on the diagonal):

    - ``varp['<key>']``: the map of ``score``; ``varp['<key>_<other score>']``;
    - ``varp['<key>_coexpression']``, ``varp['<key>_random']`` (the random-weight model's map of ``score``),
      ``varp['<key>_attention']``, ``varp['<key>_<predictor name>']`` as asked;
    - ``varp['<key>_n_cells']``: cells that contributed to each entry;
    - ``uns['<key>']``: ``params`` (model, weights, perturbation, score, layers, cells, forward passes,
      ``random_weights`` of the random baseline), ``sources``, ``n_cells_perturbed`` (per source), ``maps``
      (what each ``varp`` key holds) and ``edges`` (the returned table).
    """
    from scfmkit import models
    from scfmkit._random import as_generator, as_seed

    _check_choice("perturbation", perturbation, ("delete", "overexpress"))
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        msg = f"Unknown baselines {bad}; choose from {list(BASELINES)} (and pass `predictor=` for a fitted model)."
        raise ValueError(msg)
    if n_top < 1 or n_genes < 1:
        msg = f"`n_top` and `n_genes` must be positive, got {n_top} and {n_genes}."
        raise ValueError(msg)
    predictors = [] if predictor is None else list(predictor) if isinstance(predictor, list | tuple) else [predictor]
    if not all(getattr(p, "fitted", False) for p in predictors):
        msg = "`predictor` must be fitted perturbation predictor(s) (from `fm.tl.fit_predictor`)."
        raise ValueError(msg)
    if len({str(getattr(p, "name", "predictor")) for p in predictors}) > 1:
        msg = "Several `predictor`s must be folds of one method (the same `name`)."
        raise ValueError(msg)
    target = get_modality(adata, mod)
    if target.n_vars > MAX_VARS:
        msg = (
            f"adata has {target.n_vars} genes; gene dependency maps are dense genes x genes (at most {MAX_VARS}). "
            "Subset to the genes to map first, e.g. `adata[:, adata.var['highly_variable']].copy()`."
        )
        raise ValueError(msg)
    fm_model = models.load(model, weights=weights, device=device)
    fm_model.require("gene_dependency", what="gene_dependency")
    if fm_model.family not in SCORES:  # pragma: no cover - a family that declares the capability implements it here
        msg = f"gene_dependency has no kernel for the {fm_model.family!r} family."
        raise TypeError(msg)
    family_scores = SCORES[fm_model.family]
    score = family_scores[0] if score is None else score
    _check_choice("score", score, family_scores)
    for s in scores or ():
        _check_choice("scores", s, family_scores)
    scores = tuple(dict.fromkeys([score, *(family_scores if scores is None else scores)]))
    n_layers = fm_model.n_layers
    attention_layer = n_layers if attention_layer is None else attention_layer
    if not 1 <= attention_layer <= n_layers:
        msg = f"`attention_layer` must be between 1 and {n_layers}, got {attention_layer}."
        raise ValueError(msg)
    key = key_added or f"{fm_model.family}_dependency"
    bs = fm_model.resolve_batch_size(batch_size)
    dev = fm_model.resolve_device(device)

    gen = as_generator(rng)
    rows = np.arange(target.n_obs)
    if max_cells is not None:
        if max_cells < 2:
            msg = f"`max_cells` must be at least 2, got {max_cells}."
            raise ValueError(msg)
        if max_cells < target.n_obs:
            rows = np.sort(gen.choice(target.n_obs, size=max_cells, replace=False))
    sub = target[rows]
    match = fm_model.match_adata(sub, gene_key=gene_key)
    if match.n_vars_matched == 0:
        msg = f"None of the genes match {fm_model.name}'s vocabulary; pass `gene_key=` naming the gene-name column."
        raise ValueError(msg)
    from scfmkit._checks import var_names

    names = var_names(target, gene_key)
    X = get_matrix(sub, layer)
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    X = X.astype(np.float64)
    if genes is None:
        mean = X.mean(0)
        mean[match.column < 0] = -np.inf
        src_var = np.argsort(-mean, kind="stable")[: min(n_genes, match.n_vars_matched)]
        src_var = src_var[np.isfinite(mean[src_var])]
    else:
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        if not genes or len(set(genes)) != len(genes):
            msg = f"`genes` must name distinct genes, got {genes}."
            raise ValueError(msg)
        pos = pd.Index(names).get_indexer(genes)
        missing = [g for g, p in zip(genes, pos, strict=True) if p < 0]
        if missing:
            msg = f"Genes {missing} are not in adata ({'var_names' if gene_key is None else f'var[{gene_key!r}]'})."
            raise ValueError(msg)
        unmatched = [g for g, p in zip(genes, pos, strict=True) if match.column[p] < 0]
        if unmatched:
            msg = f"Genes {unmatched} are not in {fm_model.name}'s vocabulary; they cannot be perturbed."
            raise ValueError(msg)
        src_var = pos
    src_names = [str(names[i]) for i in src_var]
    src_tok = match.token_ids[match.column[src_var]]
    tgt_tok = match.token_ids  # every matched gene (GeneMatch columns)
    seed = as_seed(gen)

    def _map(m: Any, what: str) -> tuple[DependencySums, Any]:
        cells = _tokenize(m, sub, layer=layer, gene_key=gene_key, input=input, seed=seed)
        logger.info("gene_dependency (%s): %d sources x %d cells", what, len(src_tok), len(cells))
        res = _run_kernel(
            m,
            cells,
            src_tok,
            tgt_tok,
            perturbation=perturbation,
            scores=scores,
            attention_layer=attention_layer if (what == "model" and "attention" in baselines) else None,
            emb_layer=emb_layer,
            batch_size=bs,
            device=dev,
        )
        return res, cells

    res, _ = _map(fm_model, "model")
    if res.n_cells.sum() == 0:
        msg = f"No cell holds any of the source genes {src_names} in its model input; nothing to perturb."
        raise ValueError(msg)

    has = np.flatnonzero(match.column >= 0)

    def _to_var(per_col: np.ndarray) -> np.ndarray:
        full = np.full((target.n_vars, target.n_vars), np.nan, np.float32)
        block = np.full((len(src_var), target.n_vars), np.nan)
        block[:, has] = per_col[:, match.column[has]]
        full[src_var] = block
        full[src_var, src_var] = np.nan
        return full

    means = res.means()
    maps: dict[str, np.ndarray] = {key: _to_var(means[score])}
    describe = {key: f"{fm_model.name} {score}"}
    for s in scores:
        if s != score:
            maps[f"{key}_{s}"] = _to_var(means[s])
            describe[f"{key}_{s}"] = f"{fm_model.name} {s}"
    if "attention" in baselines:
        maps[f"{key}_attention"] = _to_var(means["attention"])
        describe[f"{key}_attention"] = f"attention of layer {attention_layer}, head mean"
    random_weights = None
    if "random" in baselines:
        rseed = random_seed + 1 if fm_model.weights_id == f"random:{random_seed}" else random_seed
        twin = models.load(fm_model.source, weights="random", seed=rseed, device=device)
        random_weights = twin.weights_id
        res_r, _ = _map(twin, "random-weight model")
        maps[f"{key}_random"] = _to_var(res_r.means()[score])
        describe[f"{key}_random"] = f"random-weight model ({random_weights}) {score}"
    if "coexpression" in baselines:
        rho = spearman_columns(X, src_var)
        full = np.full((target.n_vars, target.n_vars), np.nan, np.float32)
        full[src_var] = rho
        full[src_var, src_var] = np.nan
        maps[f"{key}_coexpression"] = full
        describe[f"{key}_coexpression"] = "Spearman correlation across the same cells"
    if predictors:
        name = str(getattr(predictors[0], "name", "predictor"))
        full = np.full((target.n_vars, target.n_vars), np.nan, np.float32)
        full[src_var] = implied_effects(predictors, src_names, [str(n) for n in names])
        if np.isnan(full[src_var]).all():
            logger.warning(
                "No `predictor` can predict a source it was not trained on; fit folds that hold the sources out."
            )
        full[src_var, src_var] = np.nan
        maps[f"{key}_{name}"] = full
        describe[f"{key}_{name}"] = f"change predicted by the fitted {name} predictor"
    counts = np.zeros((target.n_vars, target.n_vars), np.float32)
    block = np.zeros((len(src_var), target.n_vars))
    block[:, has] = res.counts[:, match.column[has]]
    counts[src_var] = block
    counts[src_var, src_var] = 0

    # ---- write (inputs were all checked above)
    table = _edges(maps, key, counts, src_var, src_names, names, n_top)
    if not inplace:
        return table
    for k, v in maps.items():
        target.varp[k] = v
    target.varp[f"{key}_n_cells"] = counts
    params = {
        **fm_model.base_params,
        "perturbation": perturbation,
        "score": score,
        "scores": list(scores),
        "baselines": list(baselines),
        "predictor": str(getattr(predictors[0], "name", "predictor")) if predictors else None,
        "random_weights": random_weights,
        "attention_layer": attention_layer if "attention" in baselines else None,
        "emb_layer": emb_layer if fm_model.family == "geneformer" else None,
        "input": input if fm_model.family == "geneformer" else None,
        "layer": layer,
        "gene_key": gene_key,
        "n_cells": len(rows),
        "max_cells": max_cells,
        "batch_size": bs,
        "n_forward": res.n_forward,
        "rng": rng if isinstance(rng, int | None) else "Generator",
        "weights_note": "random-weight control" if fm_model.weights_id.startswith("random:") else "pretrained",
    }
    target.uns[key] = {
        "params": sanitize_params(params),
        "sources": src_names,
        "n_cells_perturbed": res.n_cells.astype(np.int64),
        "maps": describe,
        "edges": table,
    }
    return table


def _edges(
    maps: dict[str, np.ndarray],
    key: str,
    counts: np.ndarray,
    src_var: np.ndarray,
    src_names: list[str],
    names: pd.Index,
    n_top: int,
) -> pd.DataFrame:
    """The ``n_top`` strongest targets per source (by ``|score|``), with every other map's value beside."""
    frames = []
    for r, i in enumerate(src_var):
        main = maps[key][i]
        ok = np.flatnonzero(np.isfinite(main))
        top = ok[np.argsort(-np.abs(main[ok]), kind="stable")[:n_top]]
        row = {"source": src_names[r], "target": [str(names[j]) for j in top], "score": main[top]}
        for k, v in maps.items():
            if k != key:
                row[k[len(key) + 1 :]] = v[i, top]
        row["n_cells"] = counts[i, top].astype(np.int64)
        frames.append(pd.DataFrame(row))
    cols = ["source", "target", "score", *[k[len(key) + 1 :] for k in maps if k != key], "n_cells"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]
