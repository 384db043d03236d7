"""``fm.tl.benchmark_annotation``: fine-tuned foundation-model annotation next to its baselines, in one tidy table.

Rows for the fine-tuned model, the same fine-tuning from a random initialisation, a linear probe (logistic regression)
and kNN on the frozen embedding, and logistic regression and kNN on a reference-fitted PCA of log-normalised genes;
each scored with :func:`scfmkit.metrics.label_transfer` on the query.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import models
from .._utils import get_modality, logger

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["ANNOTATION_METHODS", "benchmark_annotation"]

#: every method of :func:`benchmark_annotation`
ANNOTATION_METHODS = ("finetune", "finetune_random_init", "linear_probe", "knn_embedding", "pca_logreg", "pca_knn")


def _score(true: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    import anndata as ad

    from ..metrics import label_transfer

    obs = pd.DataFrame({"true": pd.Series(true, dtype=object), "pred": pd.Series(pred, dtype=object)})
    obs.index = obs.index.astype(str)
    return label_transfer(ad.AnnData(obs=obs), "true", "pred", mod=None)


def _logreg(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


def _knn(k: int, n: int):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=min(k, n))


def benchmark_annotation(
    reference: AnnData | MuData,
    query: AnnData | MuData,
    model: str | Path | models.FoundationModel,
    *,
    label_key: str,
    methods: Sequence[str] = ANNOTATION_METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    weights: str = "pretrained",
    layer: str | None = None,
    gene_key: str | None = None,
    k: int = 15,
    n_hvg: int = 2000,
    n_comps: int = 50,
    finetune_options: Mapping[str, Any] | None = None,
    embed_options: Mapping[str, Any] | None = None,
    mod: str | None = "rna",
    **tokenize_options: Any,
) -> pd.DataFrame:
    """Cell annotation of ``query`` learned on ``reference``: fine-tuning against linear probes and simple classifiers.

    Parameters
    ----------
    reference, query
        Labelled training cells and the cells to annotate (``obs[label_key]`` in both; neither is modified; cells
        with a missing label are left out of training and scoring).
    model
        The foundation model (name, folder or loaded model).
    label_key
        ``obs`` column with the labels.
    methods
        Any of ``"finetune"`` (:func:`scfmkit.tl.finetune` then :func:`scfmkit.tl.annotate`),
        ``"finetune_random_init"`` (the same with ``init="random"``), ``"linear_probe"`` (standardised logistic
        regression on the frozen embedding), ``"knn_embedding"`` (kNN on the frozen embedding), ``"pca_logreg"`` and
        ``"pca_knn"`` (the same on HVG + PCA fitted on the log-normalised reference, query projected).
    seeds
        One run per seed (fine-tuning, logistic regression and PCA are seeded; kNN does not depend on it).
    weights
        ``"pretrained"`` or ``"random"`` foundation-model weights.
    layer, gene_key
        Values and gene names (for the model and the PCA; PCA accepts counts or log-normalised values).
    k
        Neighbours of the kNN classifiers.
    n_hvg, n_comps
        Genes and components of the PCA baselines.
    finetune_options
        Passed to :func:`scfmkit.tl.finetune` (``epochs``, ``learning_rate``, ``validation``, ...).
    embed_options
        Passed to the model's ``embed_cells`` for the frozen embedding (e.g. ``emb_layer``).
    mod
        Modality of MuData inputs.
    **tokenize_options
        Passed to both the fine-tuning and the frozen embedding (e.g. ``input="lognorm"`` for Geneformer).

    Returns
    -------
    Tidy :class:`pandas.DataFrame` with columns ``method``, ``seed``, ``metric``, ``label``, ``value``: metrics
    ``accuracy``, ``macro_f1``, ``f1`` (per true class, named in ``label``) from
    :func:`scfmkit.metrics.label_transfer`, and ``seconds`` (time to fit, embedding included for the probes).
    """
    from .._random import as_seed
    from ._finetune import _label_values, finetune
    from ._mapping import _pca_space, align_genes_to_reference

    unknown = [m for m in methods if m not in ANNOTATION_METHODS]
    if unknown:
        msg = f"Unknown methods {unknown}; choose from {list(ANNOTATION_METHODS)}."
        raise ValueError(msg)
    seeds = [as_seed(s) for s in seeds]
    ref = get_modality(reference, mod)
    qry = get_modality(query, mod)
    r_mask, r_text, classes = _label_values(ref, label_key)
    q_mask, q_text, _ = _label_values(qry, label_key)
    extra = sorted(set(q_text[q_mask]) - set(classes))
    if extra:
        logger.warning(
            "benchmark_annotation: query labels %s are not in the reference; no method can predict them, they count "
            "as errors.",
            extra[:10],
        )
    fm_model = models.load(model, weights=weights) if any(m in methods for m in ANNOTATION_METHODS[:4]) else None
    ref_l = ref[r_mask]
    y_ref = r_text[r_mask]
    y_true = q_text[q_mask]
    rows: list[dict[str, Any]] = []

    def add(method: str, seed: int, pred: np.ndarray, seconds: float) -> None:
        table = _score(y_true, pred)
        for rec in table.itertuples(index=False):
            if rec.metric in {"accuracy", "macro_f1", "f1"}:
                row = {"method": method, "seed": seed, "metric": rec.metric, "label": rec.label, "value": rec.value}
                rows.append(row)
        rows.append({"method": method, "seed": seed, "metric": "seconds", "label": "all", "value": seconds})

    opts = dict(finetune_options or {})
    emb = None
    for method in methods:
        for seed in seeds:
            t0 = time.perf_counter()
            if method in {"finetune", "finetune_random_init"}:
                clf = finetune(
                    ref_l,
                    fm_model,
                    label_key=label_key,
                    init="pretrained" if method == "finetune" else "random",
                    layer=layer,
                    gene_key=gene_key,
                    rng=seed,
                    mod=None,
                    **{**opts, **tokenize_options},
                )
                proba = clf.predict_proba(qry[q_mask])
                pred = np.asarray(clf.labels, dtype=object)[proba.to_numpy().argmax(1)]
            elif method in {"linear_probe", "knn_embedding"}:
                if emb is None:
                    t_emb = time.perf_counter()
                    kw = {"layer": layer, "gene_key": gene_key, **tokenize_options, **dict(embed_options or {})}
                    emb = (fm_model.embed_cells(ref_l, **kw)[0], fm_model.embed_cells(qry[q_mask], **kw)[0])
                    emb_seconds = time.perf_counter() - t_emb
                    t0 = time.perf_counter()
                est = _logreg(seed) if method == "linear_probe" else _knn(k, len(y_ref))
                pred = est.fit(emb[0], y_ref).predict(emb[1])
                t0 -= emb_seconds
            else:
                genes = align_genes_to_reference(qry, ref, gene_key=gene_key)
                q_pc, r_pc, _ = _pca_space(qry[q_mask], ref_l, genes, gene_key, layer, layer, n_hvg, n_comps, seed)
                est = _logreg(seed) if method == "pca_logreg" else _knn(k, len(y_ref))
                pred = est.fit(r_pc, y_ref).predict(q_pc)
            add(method, seed, np.asarray(pred, dtype=object), time.perf_counter() - t0)
            logger.info("benchmark_annotation: %s seed %d done", method, seed)
    return pd.DataFrame(rows, columns=["method", "seed", "metric", "label", "value"])
