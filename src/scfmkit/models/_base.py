"""The protocol every foundation model implements, and the registry that names them."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from anndata import AnnData

__all__ = ["FoundationModel", "ModelSpec", "available_models", "get_spec", "register_model"]


class FoundationModel(abc.ABC):
    """A loaded single-cell foundation model.

    Subclasses live in one file each (``geneformer.py``, ``scgpt.py``) and register a :class:`ModelSpec`.
    The AnnData wrappers in :mod:`scfmkit.tl` only talk to this interface.

    Attributes
    ----------
    family
        Short model family name; outputs go to ``obsm['X_<family>']`` and ``uns['<family>']``.
    name
        Registry name of the variant (e.g. ``"geneformer-v1"``).
    weights_id
        ``"sha256:<hex>"`` of the weights file, or ``"random:<seed>"`` for the foundationless control.
    source
        Where the model came from (a local directory, a hub id, or ``"random"``).
    """

    family: str
    name: str
    weights_id: str
    source: str

    @abc.abstractmethod
    def embed_cells(self, adata: AnnData, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """Return ``(embeddings, params)``: float32 ``(n_obs, d)`` in input order and the run's parameters."""

    def embed_genes(
        self, adata: AnnData, *, kind: str = "contextual", **kwargs: Any
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Return ``(gene_embeddings, params)``: float32 ``(n_vars, d)`` in ``adata.var`` order.

        Rows are NaN for genes the model lacks (or, for contextual embeddings, that never occur).

        ``kind="contextual"`` averages each gene's output embedding over the cells where it appears;
        ``kind="token"`` returns the learned input token embeddings (no forward pass).
        """
        msg = f"{type(self).__name__} does not provide {kind} gene embeddings."
        raise NotImplementedError(msg)

    @property
    def base_params(self) -> dict[str, Any]:
        """Parameters every run records in ``uns['<family>']['params']``."""
        from .. import __version__

        return {
            "model": self.name,
            "source": str(self.source),
            "weights": self.weights_id,
            "scfmkit_version": __version__,
        }


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model.

    Attributes
    ----------
    name
        Registry name (``"geneformer-v1"``).
    family
        Family name (``"geneformer"``).
    load
        ``load(path_or_none, *, weights, seed, device, **kwargs) -> FoundationModel``.
    description
        One line for :func:`available_models`.
    hub_repo, hub_subfolder
        Where the public checkpoint lives on the HuggingFace hub (``None`` if not on the hub).
    needs
        What input the model needs (for the model table).
    """

    name: str
    family: str
    load: Callable[..., FoundationModel]
    description: str = ""
    hub_repo: str | None = None
    hub_subfolder: str | None = None
    needs: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (names and aliases must be new)."""
    for key in (spec.name, *spec.aliases):
        if key in _REGISTRY and _REGISTRY[key] is not spec:
            msg = f"A model named {key!r} is already registered."
            raise ValueError(msg)
        _REGISTRY[key] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name or alias, with an error that lists what exists."""
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        names = sorted({s.name for s in _REGISTRY.values()})
        msg = f"Unknown model {name!r}; available: {names}. A local checkpoint directory can be passed as a path."
        raise KeyError(msg) from None


def available_models() -> pd.DataFrame:
    """A table of the registered models: name, family, input needs, hub location, description."""
    import pandas as pd

    _ensure_builtin()
    specs = {s.name: s for s in _REGISTRY.values()}
    rows = [
        {
            "name": s.name,
            "family": s.family,
            "needs": s.needs,
            "hub": f"{s.hub_repo}/{s.hub_subfolder}" if s.hub_subfolder else s.hub_repo,
            "description": s.description,
        }
        for s in specs.values()
    ]
    return pd.DataFrame(rows).set_index("name")


def _ensure_builtin() -> None:
    # importing the model modules registers them; kept lazy so that `import scfmkit` stays light
    from . import geneformer  # noqa: F401

    try:
        from . import scgpt  # noqa: F401
    except ImportError:  # pragma: no cover - while scGPT support is being added
        pass


def resolve_model_dir(spec: ModelSpec, path: str | Path | None, requested: str | None = None) -> Path | None:
    """Find a local directory for ``spec``: ``path``, else ``settings.models_dir/<name or alias>``, else ``None``."""
    from .._settings import settings

    if path is not None:
        p = Path(path).expanduser()
        if not p.is_dir():
            msg = f"Model directory {str(p)!r} does not exist."
            raise FileNotFoundError(msg)
        return p
    if settings.models_dir is not None:
        for name in dict.fromkeys([requested or spec.name, spec.name, *spec.aliases]):
            if (settings.models_dir / name).is_dir():
                return settings.models_dir / name
    return None
