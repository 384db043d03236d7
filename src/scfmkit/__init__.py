"""scfmkit: single-cell foundation models on AnnData/MuData, always next to strong baselines."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, metrics, models, pl, pp, tl
from ._settings import settings

try:
    __version__ = version("scfmkit")
except PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["datasets", "metrics", "models", "pl", "pp", "settings", "tl", "__version__"]
