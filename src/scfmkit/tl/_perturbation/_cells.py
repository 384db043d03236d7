"""The cells behind a pseudobulk (for predictors that train on cells): values transformed as the pseudobulk's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from scfmkit._labels import obs_strings

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["cell_values", "pseudobulk_params"]


def pseudobulk_params(pdata: AnnData) -> dict:
    """The pseudobulk's ``uns['perturbation']['params']``, ``layer`` back to ``None`` where stored as text."""
    params = dict(pdata.uns["perturbation"].get("params", {}))
    layer = params.get("layer")
    params["layer"] = None if layer in (None, "None", "") else str(layer)  # h5ad-safe params store None as "None"
    return params


def cell_values(
    pdata: AnnData, cells: AnnData, *, var_names: pd.Index, ctrl: np.ndarray, control: str, min_control: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The cells' values on the pseudobulk's genes (float32 copy), transformed as the pseudobulk was, and labels.

    The pseudobulk's ``layer`` is read; when it was built from counts, each cell is normalised to ``target_sum`` and
    ``log1p``-transformed (as :func:`scfmkit.pp.pseudobulk_perturbations`). The cells' control mean must equal the
    pseudobulk's ``control_mean``: this catches counts given where log-normalised values were pseudobulked (and the
    reverse), another layer, or other cells. NaN/inf and negative values are refused. ``cells`` is not modified.
    """
    from scfmkit._utils import get_matrix

    params = pseudobulk_params(pdata)
    key = params.get("perturbation_key", "condition")
    if key not in cells.obs:
        msg = (
            f"The cells lack obs[{key!r}], the perturbation column the pseudobulk was built from; pass the "
            "cell-level AnnData given to `scfmkit.pp.pseudobulk_perturbations`."
        )
        raise KeyError(msg)
    missing = var_names.difference(pd.Index(cells.var_names.astype(str)))
    if len(missing):
        msg = f"{len(missing)} genes of the pseudobulk are not in the cells' var_names (e.g. {list(missing[:5])})."
        raise ValueError(msg)
    cols = pd.Index(cells.var_names.astype(str)).get_indexer(var_names)
    X = get_matrix(cells, params["layer"])[:, cols]
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    X = np.array(X, dtype=np.float64)  # a copy: the caller's matrix is never touched
    if not np.isfinite(X).all():
        msg = "The cells' values contain NaN or infinite entries; clean them (the pseudobulk was built without)."
        raise ValueError(msg)
    if (X < 0).any():
        msg = "The cells' values are negative (scaled?); pass the pseudobulk's counts or log-normalised values."
        raise ValueError(msg)
    if params.get("counts"):
        tot = X.sum(1, keepdims=True)
        tot[tot == 0] = 1.0
        X = np.log1p(X / tot * float(params.get("target_sum") or 1e4))
    labels = obs_strings(cells.obs, key, what="perturbation_key")  # NaN labels: a clear error (pandas 3 safe)
    is_ctrl = labels == control
    if is_ctrl.sum() < min_control:
        msg = (
            f"Only {int(is_ctrl.sum())} control cell(s) labelled {control!r} in obs[{key!r}] of the cells; at least "
            f"{min_control} are needed (they are the inputs of training and prediction). Pass all control cells."
        )
        raise ValueError(msg)
    mean = X[is_ctrl].mean(0)
    if not np.allclose(mean, ctrl, rtol=1e-4, atol=1e-6):
        worst = float(np.abs(mean - ctrl).max())
        hint = (
            "the cells look like raw counts but the pseudobulk holds log-normalised means"
            if _integers(X) and not params.get("counts")
            else "the cells are on another scale (counts vs log-normalised, another layer) or are other cells"
        )
        msg = (
            f"The cells' control mean differs from the pseudobulk's control_mean (max abs {worst:.3g}): {hint}. "
            "Pass the same AnnData (and layer) that `scfmkit.pp.pseudobulk_perturbations` was given."
        )
        raise ValueError(msg)
    return X.astype(np.float32), labels


def _integers(X: np.ndarray) -> bool:
    sample = X.ravel()[:200_000]
    return bool(sample.size and np.all(np.mod(sample, 1) == 0) and sample.max() > 1)
