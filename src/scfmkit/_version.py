"""The installed version of scfmkit (a leaf module: importing it imports nothing else of the package)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scfmkit")
except PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0.0.0+unknown"
