"""``fit_predictor`` and ``predict_perturbation``: the AnnData wrappers around the predictors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scfmkit._utils import get_modality, logger, sanitize_params

from ._predictor import PerturbationPredictor, _make, _train_names

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["fit_predictor", "predict_perturbation"]


def fit_predictor(
    adata: AnnData,
    method: str = "linear",
    *,
    train: Sequence[str] | None = None,
    split_key: str = "split",
    cells: AnnData | None = None,
    **options: Any,
) -> PerturbationPredictor:
    """Fit a perturbation predictor and return it (its ``.predict(names)`` takes any condition labels).

    Parameters
    ----------
    adata
        Pseudobulk from :func:`scfmkit.pp.pseudobulk_perturbations`.
    method
        A registered predictor (:func:`available_predictors`).
    train
        Training conditions (default: ``obs[split_key] == "train"``). Control is always included.
    split_key
        ``obs`` column of the split.
    cells
        The cell-level AnnData the pseudobulk was built from, for predictors that train on cells (``scgpt``).
    **options
        Options of the predictor (e.g. ``n_components``, ``ridge``, ``gene_embedding`` for ``linear``).

    Returns
    -------
    The fitted predictor (a new object; ``adata`` and ``cells`` are not modified).
    """
    from scfmkit.pp._perturbation import _check_pseudobulk

    _check_pseudobulk(adata)
    predictor = _make(method, options)
    return predictor.fit(adata, _train_names(adata, split_key, train), cells=cells)


def predict_perturbation(
    adata: AnnData | MuData,
    *,
    method: str = "linear",
    conditions: Sequence[str] | None = None,
    train: Sequence[str] | None = None,
    split_key: str = "split",
    cells: AnnData | None = None,
    mod: str | None = "rna",
    key_added: str | None = None,
    copy: bool = False,
    **options: Any,
) -> AnnData | MuData | None:
    """Fit a predictor on the training conditions of a pseudobulk and predict other conditions.

    Predictors: ``control`` (no change), ``mean`` (average training change), ``additive`` (sum of single changes;
    refuses conditions whose singles were not trained on), ``linear`` (Ahlmann-Eltze et al.; see
    :class:`LinearPredictor` for the options, including pretrained gene embeddings). Geneformer's
    in-silico perturbation yields embedding shifts, not expression (:func:`geneformer_perturb`).

    Parameters
    ----------
    adata
        Pseudobulk from :func:`scfmkit.pp.pseudobulk_perturbations` (a MuData is used through ``mod``).
    method
        Registered predictor name.
    conditions
        Rows to predict (default: every row that is not in training).
    train
        Training conditions (default: ``obs[split_key] == "train"``).
    split_key
        ``obs`` column written by :func:`scfmkit.pp.split_perturbations`.
    cells
        The cell-level AnnData of the pseudobulk, for predictors that train on cells (``scgpt``).
    mod
        Modality of a MuData.
    key_added
        Layer name (default ``"pred_<method>"``).
    copy
        Return a copy instead of writing into ``adata``.
    **options
        Predictor options.

    Returns
    -------
    ``None`` or a copy. Writes ``layers['<key_added>']`` (predicted mean log-normalised expression; NaN rows for
    conditions not predicted) and ``uns['<key_added>']['params']`` (method, options, train and predicted conditions).
    """
    target = get_modality(adata, mod)
    predictor = fit_predictor(target, method, train=train, split_key=split_key, cells=cells, **options)
    train_set = set(predictor.train_names)
    names = list(target.obs_names.astype(str))
    if conditions is None:
        conditions = [n for n in names if n not in train_set]
    conditions = [str(c) for c in conditions]
    missing = [c for c in conditions if c not in names]
    if missing:
        msg = (
            f"Conditions {missing[:5]} are not rows of the pseudobulk; use "
            "`scfmkit.tl.fit_predictor(...).predict(...)` to predict conditions that were not measured."
        )
        raise KeyError(msg)
    pred = predictor.predict(conditions)
    data = adata.copy() if copy else adata
    tgt = get_modality(data, mod)
    key = key_added or f"pred_{method}"
    layer = np.full(tgt.shape, np.nan)
    pos = pd.Index(names).get_indexer(conditions)
    layer[pos] = pred.to_numpy()
    tgt.layers[key] = layer
    opts = {k: (v if isinstance(v, str | int | float | bool) else type(v).__name__) for k, v in options.items()}
    tgt.uns[key] = {
        "params": sanitize_params(
            {"method": method, **opts, "train": list(predictor.train_names), "predicted": conditions}
        )
    }
    logger.info("Wrote layers[%r] (%d predicted conditions) and uns[%r]['params']", key, len(conditions), key)
    return data if copy else None
