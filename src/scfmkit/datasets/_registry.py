"""File registry: name -> file name, sha256, public address; lookup, download and verification."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .._utils import logger
from ..models._io import sha256_file

__all__ = ["DATASETS", "DatasetFile", "fetch", "load"]


@dataclass(frozen=True)
class DatasetFile:
    """One dataset file: its name, checksum, public address (``None`` when it has none) and origin."""

    filename: str
    sha256: str
    url: str | None
    source: str


_PERTURBENCH = "https://raw.githubusercontent.com/altoslabs/perturbench/d357dfae3b50968e800e9f5f273ff145080ae67c"
_MUON = "https://raw.githubusercontent.com/scverse/muon/03c762e5ebe44b5aa23392b1f31d27c41f2e0b44"

DATASETS: dict[str, DatasetFile] = {
    "norman2019": DatasetFile(
        "norman2019_perturbench_subset.h5ad",
        "220998f5630c813228c8661c86dd52244b9ac87127511289af90e0d900d8429b",
        f"{_PERTURBENCH}/src/perturbench/data/resources/devel.h5ad",
        "altoslabs/perturbench devel.h5ad (BSD-3)",
    ),
    "papalexi2021": DatasetFile(
        "papalexi2021_eccite_lowmoi.h5ad",
        "52acb49709ebf01b3b76e97ca0bd4aac7a6247b3dc6c7fa159404e232b6faf97",
        None,
        "Katsevich-Lab/sceptre data/*_lowmoi.rda, converted (GPL-3)",
    ),
    "kang2018": DatasetFile(
        "kang2018_ifnb_counts.h5ad",
        "37f87d7ffce11fe559c5966873b9375eec36bd72a81a0dbd71e868c0f11ef578",
        None,
        "immunogenomics/harmony data/pbmc_stim.RData, converted (GPL-3)",
    ),
    "kang2018_celltypes": DatasetFile(
        "kang2018_ifnb_celltypes_lognorm.h5ad",
        "83f89f5356a4c01f65bbcee225eb45d8d8b13b6c962724431a26c1bf568ff09e",
        "https://raw.githubusercontent.com/theislab/scgen/dd7e178f9b42b9dfef9eb18d0da4b8e3caea4cf7/data/valid.h5ad",
        "theislab/scgen data/valid.h5ad (GPL-3)",
    ),
    "pbmc_3batch": DatasetFile(
        "pbmc_3batch_symphony.h5ad",
        "1980d9aca270ddef446f23312528da19a6e92da09f25e73baa87f76832c0893d",
        None,
        "immunogenomics/symphony data/pbmcs_*_small.rda, converted (GPL-3)",
    ),
    "pbmc10k_cite": DatasetFile(
        "pbmc10k_cite_200cells.h5ad",
        "512fe360bd1cc79821f67959cc47e19b92bb7edbbb9351da5d1e9d70b35102a2",
        None,
        "scvi-tools 1.4.2 sdist tests/test_data (BSD-3)",
    ),
    "pbmc5k_cite": DatasetFile(
        "pbmc5k_cite_200cells.h5ad",
        "83f2c7d175600acf458d839920ce52448beeab66557a76d8b0312c91102a3326",
        None,
        "scvi-tools 1.4.2 sdist tests/test_data (BSD-3)",
    ),
    "pbmc_multiome": DatasetFile(
        "pbmc_multiome_rna_atac_1000cells.h5mu",
        "9f5c1943c1159e9fa494216993f00da26c138ba68d6afe37340774db739da93d",
        f"{_MUON}/tests/data/atac/test_rna_atac.h5mu",
        "scverse/muon tests/data/atac/test_rna_atac.h5mu (BSD-3)",
    ),
    "celltypist_sample": DatasetFile(
        "celltypist_sample_counts_559cells.h5ad",
        "be13a54df7be8a834ed4b817032b1c56774e9de4849bc7ab0c2fb2653377ccf2",
        None,
        "celltypist 1.7.1 wheel, sample_cell_by_gene.csv, converted (MIT)",
    ),
    "gencode_v44_gene_id2name": DatasetFile(
        "gencode_v44_gene_id2name.csv",
        "0a8d9b07cf63f9ef70e65f3c7afc9d2092a7d9890281172df770003827912f53",
        None,
        "celltypist 1.7.1 wheel, GENCODEv44_Gene_id2name.csv (MIT)",
    ),
}


def _verify(path: Path, entry: DatasetFile) -> Path:
    digest = sha256_file(path)
    if digest != entry.sha256:
        msg = (
            f"{path} has sha256 {digest[:12]}..., expected {entry.sha256[:12]}... for {entry.filename}. "
            "The file is damaged or a different version; delete it so it is fetched again, or point "
            "SCFMKIT_DATA_DIR at the right copy."
        )
        raise OSError(msg)
    return path


def fetch(name: str, *, path: str | Path | None = None, verify: bool = True) -> Path:
    """Return a verified local path of dataset ``name``, downloading it into the cache if needed.

    Parameters
    ----------
    name
        A key of :data:`DATASETS`.
    path
        A file or a folder holding it. Default: ``$SCFMKIT_DATA_DIR``, then the cache.
    verify
        Check the sha256 (recommended).
    """
    from .._settings import settings

    if name not in DATASETS:
        msg = f"Unknown dataset {name!r}; available: {sorted(DATASETS)}."
        raise KeyError(msg)
    entry = DATASETS[name]
    candidates: list[Path] = []
    if path is not None:
        p = Path(path).expanduser()
        candidates.append(p / entry.filename if p.is_dir() else p)
    if settings.data_dir is not None:
        candidates.append(Path(settings.data_dir) / entry.filename)
    cached = Path(settings.cache_dir) / "data" / entry.filename
    candidates.append(cached)
    for c in candidates:
        if c.is_file():
            return _verify(c, entry) if verify else c
    if path is not None:
        msg = f"Dataset file {candidates[0]} does not exist."
        raise FileNotFoundError(msg)
    if entry.url is None:
        msg = (
            f"Dataset {name!r} ({entry.filename}) has no public download address; it was converted from "
            f"{entry.source}. Set SCFMKIT_DATA_DIR to a folder holding {entry.filename} or pass `path=`."
        )
        raise FileNotFoundError(msg)
    return _download(entry.url, cached, entry, verify=verify)


def _download(url: str, dest: Path, entry: DatasetFile, *, verify: bool) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading %s from %s", entry.filename, url)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp_path, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as err:
            msg = (
                f"Downloading {entry.filename} from {url} failed ({err}). If this machine is offline, copy the file "
                "into a folder and set SCFMKIT_DATA_DIR to it, or pass `path=`."
            )
            raise OSError(msg) from err
        if verify:
            _verify(tmp_path, entry)
        tmp_path.replace(dest)
    finally:
        tmp_path.unlink(missing_ok=True)
    return dest


def load(name: str, *, path: str | Path | None = None, backed: str | None = None):
    """Read dataset ``name`` as AnnData (``.h5ad``) or MuData (``.h5mu``).

    ``.h5mu`` files written by older muon versions are read through :func:`~scfmkit.datasets.read_h5mu`, which
    also works with mudata >= 0.4.
    """
    p = fetch(name, path=path)
    if p.suffix == ".h5mu":
        from ._h5mu import read_h5mu

        return read_h5mu(p, backed=backed)
    if p.suffix == ".csv":
        import pandas as pd

        return pd.read_csv(p, header=None)
    return _read_h5ad(p, backed=backed)


def _read_h5ad(path: Path, *, backed: str | None = None):
    """``anndata.read_h5ad`` without the warnings about the old file layout of some registered files.

    Files such as the CITE-seq and Kang 2018 ones were written by old anndata versions (elements without encoding
    metadata, categories in ``uns``): anndata reads them correctly but warns (``OldFormatWarning``, and a
    ``FutureWarning`` when it moves ``uns['neighbors']`` graphs to ``obsp``). The user cannot act on these for a
    registered file, so they are silenced here, around this read only.
    """
    import warnings

    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ad.OldFormatWarning)
        warnings.filterwarnings("ignore", message=r"Moving element from \.uns\['neighbors'\]", category=FutureWarning)
        return ad.read_h5ad(path, backed=backed)
