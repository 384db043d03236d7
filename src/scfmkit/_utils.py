"""Small helpers shared by the AnnData/MuData wrappers (no public API)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

from ._checks import check_nonnegative_finite, get_matrix

logger = logging.getLogger("scfmkit")

__all__ = [
    "check_nonnegative_finite",
    "get_matrix",
    "get_modality",
    "logger",
    "progress",
    "sanitize_params",
    "write_back",
]


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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


def _is_ours(record: object) -> bool:
    params = record.get("params") if isinstance(record, Mapping) else None
    return isinstance(params, Mapping) and "scfmkit_version" in params


def check_free_keys(
    adata: AnnData, *, obsm: str | None = None, varm: str | None = None, uns: str | None = None
) -> None:
    """Refuse to write keys that hold another tool's results (e.g. scanpy's ``obsm['X_pca']``/``uns['pca']``).

    A key is free when it is absent or was written by scfmkit before (its ``uns[uns]['params']`` records the
    scfmkit version); called before any work, so a refused call changes nothing.
    """
    ours = uns is not None and _is_ours(adata.uns.get(uns))
    taken = []
    if uns is not None and uns in adata.uns and not ours:
        taken.append(f"uns[{uns!r}]")
    if obsm is not None and obsm in adata.obsm and not ours:
        taken.append(f"obsm[{obsm!r}]")
    if varm is not None and varm in adata.varm and not ours:
        taken.append(f"varm[{varm!r}]")
    if taken:
        msg = (
            f"{' and '.join(taken)} already hold results of another tool (e.g. scanpy); scfmkit does not overwrite "
            "them. Pass another `key_added=`, or delete the key first if it is yours to replace."
        )
        raise ValueError(msg)
