"""Package-wide settings, overridable by ``SCFMKIT_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["Settings", "settings"]


def _env_path(name: str, default: Path | None) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


class Settings:
    """Run-time settings of scfmkit.

    Every attribute is read from an environment variable when the attribute is first used and can be
    set directly afterwards (``fm.settings.batch_size = 64``).

    Attributes
    ----------
    device
        Torch device for model inference (``SCFMKIT_DEVICE``; default ``"auto"``: CUDA, then MPS, then CPU).
    batch_size
        Default number of cells per forward pass (``SCFMKIT_BATCH_SIZE``; default 32).
    cache_dir
        Where downloaded models and datasets are cached (``SCFMKIT_CACHE_DIR``; default ``~/.cache/scfmkit``).
    models_dir
        A folder holding one sub-folder per model name, e.g. ``geneformer-v1/`` (``SCFMKIT_MODELS_DIR``).
        Searched before any download.
    data_dir
        A folder holding the dataset files (``SCFMKIT_DATA_DIR``). Searched before any download.
    progress
        Show progress bars on long loops (``SCFMKIT_PROGRESS``; default True).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Re-read every setting from the environment."""
        self.device: str = os.environ.get("SCFMKIT_DEVICE", "auto")
        self.batch_size: int = int(os.environ.get("SCFMKIT_BATCH_SIZE", "32"))
        self.cache_dir: Path = _env_path("SCFMKIT_CACHE_DIR", Path("~/.cache/scfmkit").expanduser())
        self.models_dir: Path | None = _env_path("SCFMKIT_MODELS_DIR", None)
        self.data_dir: Path | None = _env_path("SCFMKIT_DATA_DIR", None)
        self.progress: bool = os.environ.get("SCFMKIT_PROGRESS", "1").lower() not in {"0", "false", "no"}

    def resolve_device(self, device: str | None = None) -> str:
        """Return a concrete torch device name for ``device`` (``None`` means :attr:`device`)."""
        device = device or self.device
        import torch

        if device != "auto":
            kind = str(device).split(":")[0]
            if kind == "cuda" and not torch.cuda.is_available():
                msg = (
                    f"device={device!r} but torch finds no CUDA GPU (torch {torch.__version__}, built "
                    f"{'with' if torch.version.cuda else 'without'} CUDA). Use device='cpu', or 'auto' to take a GPU "
                    "when there is one."
                )
                raise ValueError(msg)
            if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                msg = f"device={device!r} but this machine has no Apple MPS device. Use device='cpu' or 'auto'."
                raise ValueError(msg)
            return device

        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    def __repr__(self) -> str:
        fields = ("device", "batch_size", "cache_dir", "models_dir", "data_dir", "progress")
        return "Settings(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in fields) + ")"


settings = Settings()
