"""Small helpers shared by the AnnData/MuData wrappers (no public API)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger("scfmkit")

__all__ = ["check_nonnegative_finite", "get_modality", "logger", "progress", "sanitize_params", "write_back"]


def is_mudata(data: object) -> bool:
    """Whether ``data`` is a :class:`mudata.MuData` (without importing mudata when it is not loaded)."""
    return type(data).__name__ == "MuData" and hasattr(data, "mod")


def get_modality(data: AnnData | MuData, mod: str | None = "rna") -> AnnData:
    """Return the AnnData to work on: ``data`` itself, or ``data[mod]`` for a MuData.

    Raises a clear error when the modality does not exist.
    """
    if is_mudata(data):
        if mod is None:
            msg = "A MuData was passed but `mod=None`; pass `mod=` with one of " + f"{list(data.mod)}."
            raise ValueError(msg)
        if mod not in data.mod:
            msg = f"Modality {mod!r} is not in this MuData (it has {list(data.mod)}); pass `mod=` with one of them."
            raise KeyError(msg)
        return data.mod[mod]
    from anndata import AnnData

    if not isinstance(data, AnnData):
        msg = f"Expected an AnnData or MuData, got {type(data).__name__}."
        raise TypeError(msg)
    return data


def write_back(data: AnnData | MuData, mod: str | None, *, obsm_keys: Iterable[str] = ()) -> None:
    """After results were written into ``data[mod]``, mirror obsm keys into the MuData as ``'<mod>:<key>'``.

    Plain AnnData is left as it is.
    """
    if not is_mudata(data):
        return
    adata = data.mod[mod]
    for key in obsm_keys:
        values = adata.obsm[key]
        if adata.n_obs == data.n_obs and (adata.obs_names == data.obs_names).all():
            data.obsm[f"{mod}:{key}"] = values
        else:  # cells missing from the modality get NaN rows
            import pandas as pd

            out = np.full((data.n_obs, np.shape(values)[1]), np.nan, dtype=np.float32)
            pos = pd.Index(data.obs_names).get_indexer(adata.obs_names)
            out[pos] = np.asarray(values)
            data.obsm[f"{mod}:{key}"] = out


def sanitize_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Make a parameter dict writable to h5ad: ``None`` becomes ``"None"``, tuples lists, numpy scalars python."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            out[key] = "None"
        elif isinstance(value, Mapping):
            out[key] = sanitize_params(value)
        elif isinstance(value, np.generic):
            out[key] = value.item()
        elif isinstance(value, (list, tuple)):
            items = [v.item() if isinstance(v, np.generic) else v for v in value]
            out[key] = [("None" if v is None else v) for v in items]
        elif isinstance(value, (str, int, float, bool, np.ndarray)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def progress(
    iterable: Iterable, *, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool | None = None
):
    """Wrap ``iterable`` in a tqdm progress bar when :attr:`scfmkit.settings.progress` is on."""
    from ._settings import settings

    if enabled is None:
        enabled = settings.progress
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)


def check_nonnegative_finite(X: np.ndarray | sparse.spmatrix, *, what: str = "X") -> None:
    """Raise a clear ``ValueError`` if ``X`` holds negative, NaN or infinite values."""
    data = X.data if sparse.issparse(X) else np.asarray(X)
    if data.size == 0:
        return
    if not np.isfinite(data).all():
        msg = f"{what} contains NaN or infinite values; clean or impute them before calling this function."
        raise ValueError(msg)
    if data.min() < 0:
        msg = (
            f"{what} contains negative values (min {data.min():.3g}); this looks scaled or centred. "
            "Pass raw counts (or log-normalised values), e.g. `layer='counts'`."
        )
        raise ValueError(msg)


def get_matrix(adata: AnnData, layer: str | None):
    """Return ``adata.X`` or ``adata.layers[layer]`` with a clear error when the layer is missing."""
    if layer is None:
        if adata.X is None:
            msg = "adata.X is empty; pass `layer=` naming the layer that holds the values."
            raise ValueError(msg)
        return adata.X
    if layer not in adata.layers:
        msg = f"Layer {layer!r} not found; available layers: {list(adata.layers)}. Pass `layer=None` to use `adata.X`."
        raise KeyError(msg)
    return adata.layers[layer]
