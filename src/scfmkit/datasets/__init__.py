"""Real datasets used by the tutorials, tests and benchmarks.

Each loader looks for its file in ``path``, then ``$SCFMKIT_DATA_DIR`` (:attr:`scfmkit.settings.data_dir`), then the
download cache, and downloads it when it has a public address. Every file is checked against its sha256.
"""

from ._h5mu import read_h5mu
from ._loaders import (
    celltypist_sample,
    kang2018,
    kang2018_celltypes,
    norman2019,
    papalexi2021,
    pbmc68k_reduced,
    pbmc_3batch,
    pbmc_cite,
    pbmc_multiome,
)
from ._multimodal import pbmc_cite_mudata
from ._registry import DATASETS, fetch, load

__all__ = [
    "DATASETS",
    "celltypist_sample",
    "fetch",
    "kang2018",
    "kang2018_celltypes",
    "load",
    "norman2019",
    "papalexi2021",
    "pbmc68k_reduced",
    "pbmc_3batch",
    "pbmc_cite",
    "pbmc_cite_mudata",
    "pbmc_multiome",
    "read_h5mu",
]
