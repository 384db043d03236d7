"""scfmkit: single-cell foundation models on AnnData/MuData, always next to strong baselines."""

from . import datasets, metrics, models, pl, pp, tl
from ._settings import settings
from ._version import __version__

__all__ = ["datasets", "metrics", "models", "pl", "pp", "settings", "tl", "__version__"]
