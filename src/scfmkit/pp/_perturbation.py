"""Perturbation pseudobulks and train/test splits over conditions.

A condition label is ``control`` (any label passed as ``control=``), ``GENE`` or ``GENE1+GENE2`` (separator
``sep``); tokens equal to the control label are ignored (GEARS writes ``GENE+ctrl``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from scfmkit._random import as_generator
from scfmkit._utils import get_matrix, get_modality, logger, sanitize_params

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["parse_condition", "pseudobulk_perturbations", "split_perturbations"]

SPLIT_LABELS = ("train", "test", "holdout")


def parse_condition(condition: str, *, control: str = "control", sep: str = "+") -> tuple[str, ...]:
    """Perturbed genes of a condition label: ``"A+B"`` -> ``("A", "B")``, the control label -> ``()``.

    Parameters
    ----------
    condition
        The label.
    control
        Control label (also dropped where it appears as a token, as in GEARS' ``A+ctrl``).
    sep
        Separator of combined perturbations.

    Returns
    -------
    The gene tokens in label order.
    """
    condition = str(condition)
    if condition == control:
        return ()
    return tuple(t for t in (s.strip() for s in condition.split(sep)) if t and t != control)


def _looks_like_counts(X) -> bool:
    data = X.data if sparse.issparse(X) else np.asarray(X).ravel()
    if data.size == 0:
        return False
    sample = data[: min(data.size, 200_000)]
    return bool(np.all(sample >= 0) and np.all(np.mod(sample, 1) == 0) and sample.max() > 1)


def pseudobulk_perturbations(
    adata: AnnData | MuData,
    *,
    perturbation_key: str = "condition",
    control: str = "control",
    layer: str | None = None,
    counts: bool | None = None,
    target_sum: float = 1e4,
    sep: str = "+",
    n_top_de: int = 20,
    min_cells: int = 2,
    mod: str | None = "rna",
) -> AnnData:
    """Average cells per perturbation condition into a conditions x genes AnnData (pertpy-style).

    Counts are first normalised to ``target_sum`` per cell and ``log1p``-transformed (logged); log-normalised values
    are averaged as they are. Top DE genes per condition against control use scanpy's
    :func:`~scanpy.tl.rank_genes_groups` (t-test, ``rankby_abs=True``), as GEARS does.

    Parameters
    ----------
    adata
        Cells x genes with a perturbation column (a MuData is read through modality ``mod``). Not modified.
    perturbation_key
        ``obs`` column with ``control``, ``GENE`` or ``GENE1+GENE2`` labels.
    control
        Label of the control cells (e.g. ``"non-targeting"``, ``"ctrl"``).
    layer
        Layer with the values (default ``X``).
    counts
        Whether the values are raw counts. ``None`` detects it (non-negative integers).
    target_sum
        Per-cell total after normalisation of counts.
    sep
        Separator of combined perturbations in the labels.
    n_top_de
        Number of top DE genes kept per condition (GEARS uses 20).
    min_cells
        Conditions with fewer cells raise an error (drop or merge them first).
    mod
        Modality of a MuData.

    Returns
    -------
    A new AnnData with one row per condition (index = condition label), holding

    - ``X``: mean log-normalised expression (float64);
    - ``layers['delta']``: ``X`` minus the control mean;
    - ``layers['top_de']``: bool, True for each condition's top ``n_top_de`` DE genes;
    - ``obs['n_cells']``, ``obs['genes']`` (perturbed genes joined by ``sep``, ``""`` for control),
      ``obs['n_perturbed']``, ``obs['is_control']``, ``obs['genes_measured']`` (every perturbed gene is a
      ``var_name``);
    - ``var['control_mean']``;
    - ``uns['perturbation']``: ``params`` (key, control, sep, normalisation, ...), ``control``, ``sep`` and
      ``top_de_genes`` (condition -> gene names, most significant first).
    """
    import anndata as ad
    import scanpy as sc

    src = get_modality(adata, mod)
    if perturbation_key not in src.obs:
        msg = f"`perturbation_key={perturbation_key!r}` is not an obs column; available: {list(src.obs.columns)}."
        raise KeyError(msg)
    labels = src.obs[perturbation_key]
    if labels.isna().any():
        msg = (
            f"obs[{perturbation_key!r}] has {int(labels.isna().sum())} missing values; label or drop those cells "
            "(e.g. `adata = adata[adata.obs[key].notna()].copy()`)."
        )
        raise ValueError(msg)
    labels = labels.astype(str).to_numpy()
    uniq, n_cells = np.unique(labels, return_counts=True)
    if control not in uniq:
        shown = ", ".join(map(repr, uniq[:10]))
        msg = f"Control label {control!r} not found in obs[{perturbation_key!r}] (values: {shown}...); pass `control=`."
        raise ValueError(msg)
    small = uniq[n_cells < min_cells]
    if small.size:
        msg = (
            f"Conditions with fewer than {min_cells} cells: {list(small[:10])}; drop them "
            f"(e.g. `adata[~adata.obs[{perturbation_key!r}].isin([...])]`) or lower `min_cells`."
        )
        raise ValueError(msg)
    X = get_matrix(src, layer)
    X = X.tocsr().astype(np.float64) if sparse.issparse(X) else np.asarray(X, dtype=np.float64)
    data = X.data if sparse.issparse(X) else X
    if not np.isfinite(data).all():
        msg = "The expression values contain NaN or infinite entries; clean them before building pseudobulks."
        raise ValueError(msg)
    if counts is None:
        counts = _looks_like_counts(X)
    if counts:
        logger.info("Values look like raw counts: normalising each cell to %g and applying log1p.", target_sum)
        tmp = ad.AnnData(X.copy(), obs=pd.DataFrame(index=pd.RangeIndex(X.shape[0]).astype(str)))
        sc.pp.normalize_total(tmp, target_sum=target_sum)
        sc.pp.log1p(tmp)
        X = tmp.X
    elif (data < 0).any():
        msg = "Values are negative (scaled data?); pass counts or log-normalised values (`layer=`)."
        raise ValueError(msg)

    order = [str(control), *sorted(str(u) for u in uniq if u != control)]
    codes = pd.Categorical(labels, categories=order).codes
    indicator = sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(order), len(codes)))
    sizes = np.asarray(indicator.sum(1)).ravel()
    means = indicator @ X
    means = np.asarray(means.toarray() if sparse.issparse(means) else means) / sizes[:, None]
    ctrl = means[0]

    var_names = pd.Index(src.var_names.astype(str))
    genes = [parse_condition(c, control=control, sep=sep) for c in order]
    obs = pd.DataFrame(
        {
            "n_cells": sizes.astype(int),
            "genes": [sep.join(g) for g in genes],
            "n_perturbed": [len(g) for g in genes],
            "is_control": [c == control for c in order],
            "genes_measured": [all(x in var_names for x in g) for g in genes],
        },
        index=pd.Index(order, name=perturbation_key),
    )
    var = pd.DataFrame(index=var_names)
    var["control_mean"] = ctrl

    # top DE genes vs control (GEARS: t-test, rankby_abs)
    top_de: dict[str, list[str]] = {}
    perturbed = [c for c in order if c != control]
    if perturbed and n_top_de > 0:
        groups = pd.DataFrame(
            {"group": pd.Categorical(labels, categories=order)}, index=pd.RangeIndex(len(labels)).astype(str)
        )
        tmp = ad.AnnData(X, obs=groups)
        tmp.var_names = var_names
        with warnings.catch_warnings():  # scanpy's own pandas PerformanceWarnings, not about the user's data
            warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
            sc.tl.rank_genes_groups(
                tmp,
                "group",
                groups=perturbed,
                reference=control,
                method="t-test",
                rankby_abs=True,
                n_genes=min(n_top_de, tmp.n_vars),
                use_raw=False,
            )
        names = tmp.uns["rank_genes_groups"]["names"]
        top_de = {c: [str(g) for g in names[c]] for c in perturbed}
    top_mask = np.zeros(means.shape, dtype=bool)
    pos = {g: i for i, g in enumerate(var_names)}
    for r, c in enumerate(order):
        for g in top_de.get(c, []):
            top_mask[r, pos[g]] = True

    out = ad.AnnData(means, obs=obs, var=var)
    out.layers["delta"] = means - ctrl
    out.layers["top_de"] = top_mask
    params = {
        "perturbation_key": perturbation_key,
        "control": control,
        "sep": sep,
        "layer": layer,
        "counts": bool(counts),
        "target_sum": target_sum if counts else None,
        "n_top_de": n_top_de,
        "de_method": "t-test, rankby_abs",
    }
    out.uns["perturbation"] = {
        "params": sanitize_params(params),
        "control": control,
        "sep": sep,
        "top_de_genes": top_de,
    }
    logger.info("Pseudobulk: %d conditions (%d perturbed) x %d genes", len(order), len(perturbed), out.n_vars)
    return out


def _check_pseudobulk(adata: AnnData) -> dict:
    info = adata.uns.get("perturbation") if hasattr(adata, "uns") else None
    if not isinstance(info, dict) or "control" not in info or "is_control" not in adata.obs:
        msg = (
            "Expected a perturbation pseudobulk (conditions x genes); build it with "
            "`scfmkit.pp.pseudobulk_perturbations(adata, perturbation_key=..., control=...)`."
        )
        raise ValueError(msg)
    return info


def split_perturbations(
    adata: AnnData,
    *,
    method: str = "random",
    test_fraction: float = 0.2,
    train_gene_fraction: float = 0.75,
    combo_seen2_train_fraction: float = 0.75,
    double_train_fraction: float = 0.5,
    unmeasured: str = "keep",
    rng: int | np.random.Generator | None = 0,
    key_added: str = "split",
    copy: bool = False,
) -> AnnData | None:
    """Assign each condition of a pseudobulk to ``train``, ``test`` or ``holdout``. Control is always ``train``.

    The ``method`` options:

    - ``"random"``: a random ``test_fraction`` of the perturbed conditions is ``test``, the rest ``train``.
    - ``"simulation"`` (GEARS): a random ``train_gene_fraction`` of the perturbed genes is "seen"; singles of unseen
      genes and combos with 0 or 1 seen genes go to test; of the combos with 2 seen genes a random
      ``combo_seen2_train_fraction`` is train, the rest test. The same rule with 0.9/0.9 then moves part of train to
      ``holdout`` (GEARS' validation set). ``obs['<key_added>_subgroup']`` records ``unseen_single``,
      ``combo_seen0``, ``combo_seen1``, ``combo_seen2`` (``""`` for train).
    - ``"double"`` (Ahlmann-Eltze et al.): all singles and a random ``double_train_fraction`` of the doubles are
      train; half of the other doubles (rounded down, drawn at random) are test, the rest holdout.

    Parameters
    ----------
    adata
        Pseudobulk from :func:`pseudobulk_perturbations`.
    method
        ``"random"``, ``"simulation"`` or ``"double"``.
    test_fraction
        Share of conditions in test (``"random"``; at least one).
    train_gene_fraction, combo_seen2_train_fraction
        GEARS simulation parameters (GEARS defaults 0.75, 0.75).
    double_train_fraction
        Share of doubles in train (``"double"``).
    unmeasured
        Conditions whose perturbed genes are not all measured (``obs['genes_measured']`` False): ``"keep"`` treats
        them like any other, ``"train"`` never puts them in test/holdout (they still train), ``"exclude"`` labels them
        ``"excluded"`` (used neither for training nor evaluation).
    rng
        Seed or generator. ``rng=None`` draws fresh (unseeded) randomness; the default 0 makes runs reproducible.
    key_added
        ``obs`` column to write.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy. Writes ``obs['<key_added>']`` (categorical train/test/holdout[/excluded]),
    ``obs['<key_added>_subgroup']`` for ``"simulation"``, and ``uns['<key_added>']['params']``.
    """
    info = _check_pseudobulk(adata)
    if method not in {"random", "simulation", "double"}:
        msg = f"`method` must be 'random', 'simulation' or 'double', got {method!r}."
        raise ValueError(msg)
    if unmeasured not in {"keep", "train", "exclude"}:
        msg = f"`unmeasured` must be 'keep', 'train' or 'exclude', got {unmeasured!r}."
        raise ValueError(msg)
    for name, val in [
        ("test_fraction", test_fraction),
        ("train_gene_fraction", train_gene_fraction),
        ("combo_seen2_train_fraction", combo_seen2_train_fraction),
        ("double_train_fraction", double_train_fraction),
    ]:
        if not 0 <= val <= 1:
            msg = f"`{name}` must be in [0, 1], got {val}."
            raise ValueError(msg)
    gen = as_generator(rng)
    sep = info["sep"]
    obs = adata.obs
    names = obs.index.astype(str).to_numpy()
    is_ctrl = obs["is_control"].to_numpy(bool)
    measured = obs["genes_measured"].to_numpy(bool)
    genes = {n: tuple(g for g in str(s).split(sep) if g) for n, s in zip(names, obs["genes"].astype(str), strict=True)}
    label = pd.Series("train", index=names, dtype=object)
    subgroup = pd.Series("", index=names, dtype=object)
    fixed_train = set(names[is_ctrl])
    if unmeasured == "exclude":
        label[~measured & ~is_ctrl] = "excluded"
    if unmeasured != "keep":
        fixed_train |= set(names[~measured & ~is_ctrl])
    candidates = [n for n in names if n not in fixed_train]
    if not candidates:
        msg = "No perturbed conditions are left to split (all are control or excluded as unmeasured)."
        raise ValueError(msg)

    if method == "random":
        n_test = max(1, int(round(test_fraction * len(candidates))))
        if n_test >= len(candidates) and len(candidates) > 1:
            n_test = len(candidates) - 1
        test = gen.choice(np.array(candidates, dtype=object), size=n_test, replace=False)
        label[list(test)] = "test"
    elif method == "double":
        doubles = sorted(n for n in candidates if len(genes[n]) == 2)
        if len(doubles) < 2:
            msg = f"The double split needs at least 2 double perturbations, found {len(doubles)}."
            raise ValueError(msg)
        n_train = int(len(doubles) * double_train_fraction)
        train_d = set(gen.choice(np.array(doubles, dtype=object), size=n_train, replace=False))
        rest = [d for d in doubles if d not in train_d]
        test_d = set(gen.choice(np.array(rest, dtype=object), size=len(rest) // 2, replace=False))
        for d in rest:
            label[d] = "test" if d in test_d else "holdout"
    else:
        test, sub = _simulation(candidates, genes, train_gene_fraction, combo_seen2_train_fraction, gen)
        label[list(test)] = "test"
        for k, v in sub.items():
            subgroup[k] = v
        train_now = [n for n in candidates if n not in test]
        if len(train_now) > 1:
            hold, _ = _simulation(train_now, genes, 0.9, 0.9, gen)
            label[list(hold)] = "holdout"

    data = adata.copy() if copy else adata
    cats = [*SPLIT_LABELS, "excluded"] if unmeasured == "exclude" else list(SPLIT_LABELS)
    data.obs[key_added] = pd.Categorical(label.to_numpy(), categories=cats)
    if method == "simulation":
        data.obs[f"{key_added}_subgroup"] = pd.Categorical(subgroup.to_numpy())
    params = {
        "method": method,
        "test_fraction": test_fraction,
        "train_gene_fraction": train_gene_fraction,
        "combo_seen2_train_fraction": combo_seen2_train_fraction,
        "double_train_fraction": double_train_fraction,
        "unmeasured": unmeasured,
        "rng": rng if isinstance(rng, int | None) else "Generator",
    }
    data.uns[key_added] = {"params": sanitize_params(params)}
    counts = data.obs[key_added].value_counts().to_dict()
    logger.info("Split %r: %s", method, {k: int(v) for k, v in counts.items()})
    return data if copy else None


def _simulation(
    conds: Sequence[str], genes: dict, gene_frac: float, seen2_frac: float, gen: np.random.Generator
) -> tuple[set[str], dict[str, str]]:
    """GEARS' simulation rule on ``conds``: returns the test conditions and their subgroup."""
    all_genes = sorted({g for c in conds for g in genes[c]})
    n_seen = int(len(all_genes) * gene_frac)
    seen = set(gen.choice(np.array(all_genes, dtype=object), size=n_seen, replace=False)) if all_genes else set()
    test: set[str] = set()
    sub: dict[str, str] = {}
    seen2 = []
    for c in sorted(conds):
        gs = genes[c]
        k = sum(g in seen for g in gs)
        if len(gs) <= 1:
            if k == 0:
                test.add(c)
                sub[c] = "unseen_single"
        elif k == len(gs):
            seen2.append(c)
        else:
            test.add(c)
            sub[c] = f"combo_seen{k}"
    if seen2:
        n_train = int(len(seen2) * seen2_frac)
        keep = set(gen.choice(np.array(seen2, dtype=object), size=n_train, replace=False))
        for c in seen2:
            if c not in keep:
                test.add(c)
                sub[c] = "combo_seen2"
    return test, sub
