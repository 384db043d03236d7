"""Read ``.h5mu`` files, including those written by older muon versions that mudata >= 0.4 cannot read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._utils import logger

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["read_h5mu"]

# what an AnnData group may hold (the keys of ``AnnData(...)`` that a modality group stores)
_ANNDATA_KEYS = ("X", "obs", "var", "obsm", "varm", "obsp", "varp", "layers", "uns")


def read_h5mu(path: str | Path, *, backed: str | None = None) -> MuData:
    """Read an ``.h5mu`` file with :func:`mudata.read_h5mu`, falling back to a per-modality reader for old files.

    Files written by older muon versions store each modality as a plain HDF5 group without anndata's format
    metadata (``encoding-type``). mudata < 0.4 reads them; mudata >= 0.4 fails with
    ``TypeError: cannot create weak reference to 'dict' object``. For such a file each modality is read with
    anndata's ``read_elem`` and the :class:`~mudata.MuData` is built from them (plus the global ``obs``/``var``
    columns and ``uns``), in memory.

    Parameters
    ----------
    path
        The ``.h5mu`` file.
    backed
        Passed to :func:`mudata.read_h5mu`. The fallback reads into memory only, so an old-layout file with
        ``backed`` set raises an error saying so.
    """
    import mudata

    path = Path(path)
    try:
        return mudata.read_h5mu(path, backed=backed)
    except TypeError as err:
        if not _is_legacy_layout(path):
            raise
        if backed:
            msg = (
                f"{path} was written by an older muon (modalities without format metadata), which mudata "
                f"{mudata.__version__} cannot read; scfmkit's fallback reads such a file into memory only. "
                "Pass backed=None, or rewrite the file once with `mdata.write_h5mu(...)`."
            )
            raise ValueError(msg) from err
        logger.info("mudata %s cannot read %s (%s); reading each modality with anndata.", mudata.__version__, path, err)
        return read_h5mu_legacy(path)


def _is_legacy_layout(path: Path) -> bool:
    """Whether some modality group of the file has no anndata ``encoding-type``."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "mod" not in f:
                return False
            return any("encoding-type" not in f["mod"][m].attrs for m in f["mod"])
    except OSError:
        return False


def _read_elem():
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _modality(group, read_elem) -> AnnData:
    import anndata as ad

    elem = read_elem(group)
    if isinstance(elem, ad.AnnData):
        return elem
    if not isinstance(elem, dict):
        msg = f"Modality {group.name} of the .h5mu file is neither an AnnData nor a group of its parts."
        raise TypeError(msg)
    adata = ad.AnnData(**{k: elem[k] for k in _ANNDATA_KEYS if k in elem})
    raw = elem.get("raw")
    if isinstance(raw, dict) and "X" in raw:
        adata.raw = ad.AnnData(X=raw["X"], var=raw.get("var"), varm=raw.get("varm"))
    return adata


def read_h5mu_legacy(path: str | Path) -> MuData:
    """Read an old-layout ``.h5mu`` file: each modality with anndata's ``read_elem``, the rest as mudata does.

    The global elements (``obs``, ``var``, ``obsm``, ``uns``, ...) and the file's ``axis`` go to the
    :class:`~mudata.MuData` constructor as :func:`mudata.read_h5mu` passes them.
    """
    import h5py
    import mudata

    read_elem = _read_elem()
    with h5py.File(path, "r") as f:
        gmods = f["mod"]
        mods = {m: _modality(gmods[m], read_elem) for m in gmods}
        if "mod-order" in gmods.attrs:
            order = [_as_str(m) for m in gmods.attrs["mod-order"]]
            if set(order) == set(mods):
                mods = {m: mods[m] for m in order}
        parts: dict[str, Any] = {k: read_elem(f[k]) for k in f if k != "mod"}
        if "axis" in f.attrs:
            parts["axis"] = int(f.attrs["axis"])
    return mudata.MuData(mods, **parts)
