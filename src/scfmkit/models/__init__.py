"""Foundation models behind one small registry.

A model is named (``"geneformer-v1"``, ``"geneformer-v2"``, ``"scgpt-human"``), given as a local directory in its
real released layout, or passed as an already loaded :class:`FoundationModel`. Adding a model is one file that
subclasses :class:`FoundationModel` and calls :func:`register_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._base import FoundationModel, GeneMatch, ModelSpec, TokenizedCells, available_models, get_spec, register_model
from ._io import UnsafeFileError, safe_load_pickle, sha256_file

__all__ = [
    "FoundationModel",
    "GeneMatch",
    "ModelSpec",
    "TokenizedCells",
    "UnsafeFileError",
    "available_models",
    "get_spec",
    "load",
    "register_model",
    "safe_load_pickle",
    "sha256_file",
]


def load(
    model: str | Path | FoundationModel,
    *,
    weights: str = "pretrained",
    path: str | Path | None = None,
    seed: int = 0,
    device: str | None = None,
    **kwargs: Any,
) -> FoundationModel:
    """Load a foundation model.

    Parameters
    ----------
    model
        A registry name (see :func:`available_models`), a local checkpoint directory in the model's released layout,
        or an already loaded model (returned as it is).
    weights
        ``"pretrained"`` loads the checkpoint's weights. ``"random"`` builds the same architecture with seeded random
        weights and the real vocabulary: the *foundationless* control that shows what pretraining adds.
    path
        Local directory for a named model. Default: ``$SCFMKIT_MODELS_DIR/<name>``, then the hub (cached).
    seed
        Seed of the random weights when ``weights="random"``.
    device
        Torch device (default :attr:`scfmkit.settings.device`).
    **kwargs
        Passed to the model's loader.

    Returns
    -------
    The loaded :class:`FoundationModel`.
    """
    if isinstance(model, FoundationModel):
        return model
    if weights not in {"pretrained", "random"}:
        msg = f"`weights` must be 'pretrained' or 'random', got {weights!r}."
        raise ValueError(msg)
    candidate = Path(str(model)).expanduser()
    if path is None and (candidate.is_dir() or "/" in str(model) or str(model).startswith(".")):
        if not candidate.is_dir():
            msg = f"Model directory {str(candidate)!r} does not exist."
            raise FileNotFoundError(msg)
        spec = get_spec(_detect_family(candidate))
        return spec.load(candidate, weights=weights, seed=seed, device=device, **kwargs)
    spec = get_spec(str(model))
    from ._base import resolve_model_dir

    return spec.load(resolve_model_dir(spec, path, str(model)), weights=weights, seed=seed, device=device, **kwargs)


def _detect_family(directory: Path) -> str:
    """Name of the registered loader for a checkpoint directory, from the files it holds."""
    names = {p.name for p in directory.iterdir()}
    if (
        any(n.startswith("token_dictionary") for n in names)
        or "config.json" in names
        and not {"vocab.json", "args.json"} <= names
    ):
        from .geneformer import detect_variant

        return detect_variant(directory)
    if {"vocab.json", "args.json"} <= names:
        return "scgpt-human"
    from ._scbert_io import is_scbert_dir

    if is_scbert_dir(names):
        return "scbert"
    msg = (
        f"Cannot tell which model {str(directory)!r} holds: expected Geneformer files (config.json, "
        "token_dictionary*.pkl, ...), scGPT files (args.json, vocab.json, best_model.pt) or scBERT files "
        "(panglao_pretrain.pth, gene_list.txt, gene2vec_16906.npy)."
    )
    raise ValueError(msg)
