"""The interface every foundation model implements, the shapes it returns, and the registry that names them."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy import sparse

from ._tokens import TokenizedCells

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

__all__ = [
    "PRECISIONS",
    "FoundationModel",
    "GeneMatch",
    "ModelSpec",
    "TokenizedCells",
    "autocast",
    "available_models",
    "get_spec",
    "register_model",
]

#: accepted ``precision`` names -> torch dtype names (``None``: no autocast)
PRECISIONS: dict[str, str | None] = {
    "float32": None,
    "fp32": None,
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def autocast(device: str, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for float32); a clear error for other names."""
    if precision not in PRECISIONS:
        msg = f"`precision` must be 'float32', 'bfloat16' or 'float16', got {precision!r}."
        raise ValueError(msg)
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, PRECISIONS[precision]))


@dataclass
class GeneMatch:
    """How the genes (``var`` entries) of a dataset map onto a model's tokens: one shape for every model family.

    Attributes
    ----------
    gene_ids
        Per ``var`` entry: the model's identifier of the gene it maps to (Geneformer: the, possibly collapsed, Ensembl
        id; scGPT: the symbol), or ``None``. Entries whose id has no token keep the id with ``column == -1``.
    column
        Per ``var`` entry: its column among the unique matched genes, or -1 when it has no token.
    token_ids
        Per unique matched gene (column): its token id.
    id_type
        What the input names were read as (``"ensembl"`` or ``"symbol"``).
    """

    gene_ids: list[str | None]
    column: np.ndarray
    token_ids: np.ndarray
    id_type: str

    @classmethod
    def from_ids(cls, gene_ids: Sequence[str | None], token_of: Callable[[str], int | None], id_type: str) -> GeneMatch:
        """Build a match from per-var model ids and a lookup ``token_of(id) -> token id | None``."""
        column = np.full(len(gene_ids), -1, np.int64)
        first: dict[int, int] = {}
        for j, gid in enumerate(gene_ids):
            tok = None if gid is None else token_of(gid)
            if tok is not None:
                column[j] = first.setdefault(int(tok), len(first))
        return cls(list(gene_ids), column, np.fromiter(first, dtype=np.int64, count=len(first)), id_type)

    @property
    def n_vars(self) -> int:
        """Number of ``var`` entries."""
        return len(self.column)

    @property
    def n_vars_matched(self) -> int:
        """Number of ``var`` entries that map to a token."""
        return int((self.column >= 0).sum())

    @property
    def n_genes_matched(self) -> int:
        """Number of distinct tokens the ``var`` entries map to."""
        return len(self.token_ids)

    @property
    def has_duplicates(self) -> bool:
        """Whether several ``var`` entries map to the same token."""
        return self.n_vars_matched > len(self.token_ids)

    @property
    def var_tokens(self) -> np.ndarray:
        """Per ``var`` entry: its token id, or -1."""
        out = np.full(self.n_vars, -1, np.int64)
        has = self.column >= 0
        out[has] = self.token_ids[self.column[has]]
        return out

    def aggregation_matrix(self) -> sparse.csr_matrix:
        """``n_vars x n_tokens`` 0/1 matrix; ``X @ A`` sums the values of ``var`` entries that share a token."""
        rows = np.flatnonzero(self.column >= 0)
        return sparse.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, self.column[rows])), shape=(self.n_vars, len(self.token_ids))
        )

    def gather(self, X: sparse.csr_matrix) -> sparse.csr_matrix:
        """Cells x tokens: the values of ``X`` summed per token, indices sorted."""
        return (X @ self.aggregation_matrix()).tocsr().sorted_indices()

    def coverage(self, *, total: float | None = None, matched: float | None = None) -> dict[str, Any]:
        """Gene-coverage statistics with one meaning for every model (written to ``uns`` by every tool).

        ``n_vars`` entries of ``var``, ``n_vars_matched`` of them map to a token, ``n_genes_matched`` distinct
        tokens, ``frac_vars_matched`` = ``n_vars_matched / n_vars``; with the summed values of all genes (``total``)
        and of the matched ones (``matched``) also ``frac_counts_matched``.
        """
        cov: dict[str, Any] = {
            "n_vars": self.n_vars,
            "n_vars_matched": self.n_vars_matched,
            "n_genes_matched": self.n_genes_matched,
            "frac_vars_matched": self.n_vars_matched / max(self.n_vars, 1),
            "gene_id_type": self.id_type,
        }
        if total is not None and matched is not None:
            cov["frac_counts_matched"] = matched / total if total > 0 else float("nan")
        return cov


class FoundationModel(abc.ABC):
    """A loaded single-cell foundation model: the one interface the :mod:`scfmkit.pp`/:mod:`scfmkit.tl` wrappers use.

    Every family (one file each: ``geneformer.py``, ``scgpt.py``, plus its io module) implements the abstract methods
    the same way and declares what else it can do in :attr:`capabilities`; the wrappers check capabilities, never
    attributes. The plumbing shared by every family lives here: device and batch-size resolution, autocast, gene
    coverage, the recorded parameters.

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
    device
        The device asked for at load time (``None``: :attr:`scfmkit.settings.device` at each call).
    capabilities
        What the model supports beyond embeddings, e.g. ``"in_silico_perturbation"``, ``"classification"``,
        ``"generation"``.
    """

    family: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    name: str
    weights_id: str
    source: str
    device: str | None = None

    # ------------------------------------------------------------------ description
    @property
    @abc.abstractmethod
    def hidden_size(self) -> int:
        """Width of the cell and gene embeddings."""

    @property
    @abc.abstractmethod
    def n_layers(self) -> int:
        """Number of transformer layers."""

    # ------------------------------------------------------------------ genes
    @abc.abstractmethod
    def match_genes(self, genes: Sequence[str] | pd.Index, *, gene_id_type: str = "auto") -> GeneMatch:
        """Map gene names onto the model's tokens (``gene_id_type``: ``"auto"``, ``"ensembl"`` or ``"symbol"``)."""

    def match_adata(self, adata: AnnData, *, gene_key: str | None = None, gene_id_type: str = "auto") -> GeneMatch:
        """:meth:`match_genes` on ``adata.var_names`` or the ``var`` column ``gene_key``."""
        from .._checks import var_names

        return self.match_genes(var_names(adata, gene_key), gene_id_type=gene_id_type)

    # ------------------------------------------------------------------ tokens and embeddings
    @abc.abstractmethod
    def tokenize(
        self, adata: AnnData, *, layer: str | None = None, gene_key: str | None = None, **options: Any
    ) -> tuple[TokenizedCells, dict[str, Any]]:
        """The model input of every cell (input order) and the gene coverage (:meth:`GeneMatch.coverage`)."""

    @abc.abstractmethod
    def embed_cells(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "float32",
        **options: Any,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Return ``(embeddings, params)``: float32 ``(n_obs, hidden_size)`` in input order and the run's parameters."""

    @abc.abstractmethod
    def embed_genes(
        self,
        adata: AnnData,
        *,
        kind: str = "contextual",
        layer: str | None = None,
        gene_key: str | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        **options: Any,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Return ``(gene_embeddings, params)``: float32 ``(n_vars, hidden_size)`` in ``adata.var`` order.

        ``kind="contextual"`` averages each gene's output embedding over the cells where it appears;
        ``kind="token"`` returns the learned input embedding of each gene token (no forward pass). Rows are NaN for
        genes the model lacks or that never occur; a call where no gene matches raises.
        """

    # ------------------------------------------------------------------ hooks of optional capabilities
    def require(self, capability: str, *, what: str) -> None:
        """Raise a clear error when the model lacks ``capability`` (used by the wrappers instead of probing)."""
        if capability not in self.capabilities:
            have = sorted(self.capabilities) or ["embeddings only"]
            msg = f"{what} needs a model with {capability!r}; {self.name} ({type(self).__name__}) has {have}."
            raise TypeError(msg)

    def classification_head(self, n_classes: int, *, seed: int = 0) -> Any:
        """A new classification head on the cell embedding (capability ``"classification"``)."""
        self.require("classification", what="classification_head")
        raise NotImplementedError  # pragma: no cover - families with the capability override it

    def generation_head(self, *, seed: int = 0) -> Any:
        """A new expression-generation head (capability ``"generation"``)."""
        self.require("generation", what="generation_head")
        raise NotImplementedError  # pragma: no cover - families with the capability override it

    # ------------------------------------------------------------------ plumbing shared by every family
    def resolve_device(self, device: str | None = None) -> str:
        """The concrete torch device of one call: ``device``, else the model's, else the settings' (checked)."""
        from .._settings import settings

        return settings.resolve_device(device or self.device)

    @staticmethod
    def resolve_batch_size(batch_size: int | None) -> int:
        """``batch_size`` checked (a positive int), or :attr:`scfmkit.settings.batch_size` when ``None``."""
        from .._settings import settings

        value = settings.batch_size if batch_size is None else batch_size
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            msg = f"`batch_size` must be a positive integer (cells per forward pass), got {value!r}."
            raise ValueError(msg)
        return int(value)

    @staticmethod
    def check_chunk_size(chunk_size: int) -> int:
        """``chunk_size`` (cells read at a time) checked to be a positive int."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            msg = f"`chunk_size` must be a positive integer (cells read at a time), got {chunk_size!r}."
            raise ValueError(msg)
        return int(chunk_size)

    def log_coverage(self, cov: Mapping[str, Any]) -> None:
        """Log the gene coverage of a run, with a warning when few genes match."""
        from .._utils import logger

        logger.info(
            "%s gene coverage: %d/%d genes matched (%.1f%%)%s",
            self.name,
            cov["n_vars_matched"],
            cov["n_vars"],
            100 * cov["frac_vars_matched"],
            f", {100 * cov['frac_counts_matched']:.1f}% of counts" if "frac_counts_matched" in cov else "",
        )
        if cov["frac_vars_matched"] < 0.2:
            logger.warning(
                "Only %.1f%% of genes match the %s vocabulary; check `gene_key`.",
                100 * cov["frac_vars_matched"],
                self.name,
            )

    @property
    def base_params(self) -> dict[str, Any]:
        """Parameters every run records in ``uns['<family>']['params']``."""
        from .._version import __version__

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
    aliases
        Other names the registry accepts.
    write_random
        ``write_random(out_dir, vocab_dir, *, seed, **sizes) -> Path``: writes a seeded random-weight checkpoint in
        the released layout with the real vocabulary of ``vocab_dir`` (tests, demos, benchmarks).
    vocab_dir
        Name of the folder under ``$SCFMKIT_MODELS_DIR`` holding the real vocabulary files.
    tiny
        Architecture sizes of a tiny checkpoint for tests (passed to ``write_random``).
    """

    name: str
    family: str
    load: Callable[..., FoundationModel]
    description: str = ""
    hub_repo: str | None = None
    hub_subfolder: str | None = None
    needs: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    write_random: Callable[..., Path] | None = None
    vocab_dir: str | None = None
    tiny: Mapping[str, int] = field(default_factory=dict)


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
    from . import scbert  # noqa: F401


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
