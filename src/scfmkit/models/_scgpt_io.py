"""Reading and writing scGPT checkpoints in the released layout: ``args.json``, ``vocab.json``, ``best_model.pt``.

No forward code: :mod:`scfmkit.models.scgpt` builds the model from what this module reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._utils import logger

if TYPE_CHECKING:
    from ._scgpt_model import ScGPTEncoder

__all__ = [
    "CLS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "find_weights",
    "load_weights",
    "read_args",
    "read_vocab",
    "write_random_checkpoint",
]

PAD_TOKEN = "<pad>"
CLS_TOKEN = "<cls>"
SPECIAL_TOKENS = (PAD_TOKEN, CLS_TOKEN, "<eoc>")
WEIGHT_FILES = ("best_model.pt", "model.safetensors")


def read_vocab(path: Path) -> dict[str, int]:
    with open(path) as f:
        vocab = json.load(f)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        msg = f"{path} is not an scGPT vocabulary (a JSON object mapping gene symbols to integer ids)."
        raise ValueError(msg)
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        msg = f"{path}: token ids must be 0..{len(ids) - 1} without gaps or repeats."
        raise ValueError(msg)
    # the reference appends missing special tokens at the end
    for tok in SPECIAL_TOKENS:
        if tok not in vocab:
            vocab[tok] = len(vocab)
    return vocab


def read_args(path: Path) -> dict[str, Any]:
    with open(path) as f:
        args = json.load(f)
    if not isinstance(args, dict):
        msg = f"{path} is not an scGPT args.json (a JSON object)."
        raise ValueError(msg)
    return args


def find_weights(directory: Path) -> Path:
    """``best_model.pt`` (or ``model.safetensors``) of an scGPT folder."""
    from ._io import find_weights as find

    return find(
        directory,
        WEIGHT_FILES,
        where="Download the scGPT checkpoint folder (e.g. scGPT_human from the scGPT README's Google Drive link).",
    )


def load_weights(module: ScGPTEncoder, path: Path) -> dict[str, Any]:
    """Load the encoder weights of ``path`` into ``module``.

    Returns the checkpoint's ``decoder.*`` and ``cls_decoder.*`` tensors (expression decoder and classifier head,
    possibly empty) for :func:`~scfmkit.models._scgpt_model.expr_decoder_from_state` and the classification head.
    """
    from ._io import UnsafeFileError, check_finite, load_state_dict
    from ._scgpt_model import canonical_key, map_state_dict

    try:
        state = load_state_dict(path)
    except UnsafeFileError:
        raise
    except Exception as err:  # truncated/corrupt files raise many different errors
        msg = (
            f"Could not read the scGPT weights {str(path)!r} ({type(err).__name__}: {err}). The file is probably "
            "truncated or corrupt; download it again."
        )
        raise ValueError(msg) from err
    mapped, missing, unexpected, ignored = map_state_dict(state, module)
    if ignored:
        logger.info(
            "scGPT: %d checkpoint tensors of decoder/MVC/classifier heads are not needed and were skipped.",
            len(ignored),
        )
    if unexpected:
        logger.warning(
            "scGPT: %d unexpected tensors in %s were ignored: %s", len(unexpected), path.name, _short(unexpected)
        )
    if missing:
        msg = (
            f"The scGPT weights {str(path)!r} lack {len(missing)} core tensors ({_short(missing)}); refusing a "
            "partially random model. Check that the file is complete and matches args.json (nlayers, embsize)."
        )
        raise ValueError(msg)
    expected = module.state_dict()
    wrong = [k for k, v in mapped.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        msg = (
            f"The scGPT weights {str(path)!r} do not match args.json/vocab.json ({len(wrong)} tensors, e.g. {k}: "
            f"{tuple(mapped[k].shape)} in the file, {tuple(expected[k].shape)} expected). Use the args.json and "
            "vocab.json released with these weights."
        )
        raise ValueError(msg)
    check_finite(mapped, source=repr(str(path)))
    module.load_state_dict(mapped, strict=True)
    return {k: v for k, v in state.items() if canonical_key(k).startswith(("decoder.", "cls_decoder."))}


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def write_random_checkpoint(
    out_dir: str | Path,
    model_dir: str | Path,
    *,
    seed: int = 0,
    nlayers: int = 2,
    embsize: int = 64,
    nhead: int = 4,
    d_hid: int = 64,
    naming: str = "in_proj",
) -> Path:
    """Write a seeded random scGPT checkpoint in the released layout (for tests, demos and benchmarks).

    ``out_dir`` receives ``best_model.pt`` (a plain state dict with the reference model's keys, decoder heads
    included, and the real vocabulary size), ``args.json`` (``model_dir``'s with the sizes overridden) and a copy
    of ``vocab.json``.

    Parameters
    ----------
    out_dir
        Folder to write (created).
    model_dir
        Folder with the real ``args.json`` and ``vocab.json`` (e.g. ``$SCFMKIT_MODELS_DIR/scgpt-human``).
    seed
        Seed of the weights.
    nlayers, embsize, nhead, d_hid
        Architecture sizes written into ``args.json``.
    naming
        ``"in_proj"`` (PyTorch ``self_attn.in_proj_weight``) or ``"Wqkv"`` (flash-attention ``self_attn.Wqkv``).

    Returns
    -------
    ``out_dir`` as a :class:`~pathlib.Path`.
    """
    import torch

    from ._scgpt_model import ScGPTConfig, random_state_dict

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = read_vocab(model_dir / "vocab.json")
    args = read_args(model_dir / "args.json")
    args.update({"nlayers": int(nlayers), "embsize": int(embsize), "nheads": int(nhead), "d_hid": int(d_hid)})
    cfg = ScGPTConfig.from_args(args, ntoken=len(vocab), pad_id=vocab[PAD_TOKEN])
    state = random_state_dict(cfg, seed, naming=naming)
    torch.save(state, out_dir / "best_model.pt")
    with open(out_dir / "args.json", "w") as f:
        json.dump(args, f, indent=2)
    shutil.copyfile(model_dir / "vocab.json", out_dir / "vocab.json")
    return out_dir
