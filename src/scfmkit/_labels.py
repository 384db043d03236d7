"""Categorical obs columns (batches, labels) as strings, the same on pandas 2 and 3.

pandas < 3 turned missing values into the string ``"nan"`` under ``Series.astype(str)``; pandas 3 keeps them missing.
Library code never relies on either: missing values raise a clear error, or are filled with a named value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["obs_strings"]


def obs_strings(obs: pd.DataFrame, key: str, *, what: str, fill: str | None = None) -> np.ndarray:
    """``obs[key]`` as an object array of ``str``.

    Parameters
    ----------
    obs
        The cells' annotation (``adata.obs``).
    key
        The column.
    what
        What the column is used as (``"batch_key"``, ``"label_key"`` ...), for the error message.
    fill
        The value that missing entries (NaN, ``None``, ``pd.NA``) get. Default: missing entries raise.

    Raises
    ------
    KeyError
        ``key`` is not a column.
    ValueError
        The column has missing entries and ``fill`` is ``None``.
    """
    if key not in obs.columns:
        msg = f"{what} {key!r} is not an obs column; available: {list(obs.columns)}."
        raise KeyError(msg)
    col = obs[key]
    missing = col.isna().to_numpy()
    if missing.any():
        if fill is None:
            msg = (
                f"obs[{key!r}] (the {what}) has {int(missing.sum())} missing value(s) (NaN) among {len(col)} cells. "
                f"Label those cells (e.g. `adata.obs[{key!r}] = adata.obs[{key!r}].astype(object).fillna('unknown')`) "
                f"or drop them (`adata = adata[adata.obs[{key!r}].notna()].copy()`)."
            )
            raise ValueError(msg)
        col = col.astype(object).where(~missing, fill)
    return np.asarray(col.astype(str), dtype=object)
