"""scGPT's perturbation generator (``TransformerGenerator`` of bowang-lab/scGPT) in plain torch.

The layer layout follows ``scgpt/model/generation_model.py`` as the perturbation tutorial builds it
(``tutorials/Tutorial_Perturbation.ipynb``: ``dropout=0``, ``pert_pad_id=0``, ``pad_value=0``, no CLS/MVC/ECS heads):

- input: gene-token encoder (embedding + LayerNorm) + continuous value encoder (clamp at 512, Linear-ReLU-Linear,
  LayerNorm) + perturbation-flag embedding (``nn.Embedding(3, d_model, padding_idx=pert_pad_id)``; flags 0 = not
  perturbed, 1 = perturbed, 2 = pad), summed;
- the stack of post-norm transformer encoder layers (the package's scGPT encoder layers, same parameter names);
- the affine expression decoder: ``coeff(h) * value + bias(h)``, each of ``coeff``/``bias`` the package's one
  ``ExprDecoder`` (:class:`._scgpt_model.ExprDecoder`, Linear-LeakyReLU-Linear-LeakyReLU-Linear to one number per
  token, read through its ``value``).

Training loss is the reference's ``masked_mse_loss`` (:func:`masked_mse_loss`). The reference's classification
head (``cls_decoder.*``, built but never used by the generator) is not built; its tensors in a checkpoint are reported
as ignored. Dropout is fixed at the tutorial's 0 (the only value this implementation supports).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._scgpt_model import (
    ExprDecoder,
    ScGPTConfig,
    ScGPTEncoder,
    _GeneEncoder,
    _TransformerEncoder,
    _ValueEncoder,
    canonical_key,
)

__all__ = [
    "GeneratorConfig",
    "LoadReport",
    "ScGPTGenerator",
    "build_random_generator",
    "generator_state_from_checkpoint",
    "masked_mse_loss",
]

#: number of perturbation-flag classes of the reference (not perturbed, perturbed, pad)
N_PERT_CLASSES = 3
#: prefixes the tutorial loads from a pretrained scGPT checkpoint (``load_param_prefixs``)
PRETRAINED_PREFIXES = ("encoder.", "value_encoder.", "transformer_encoder.")
#: checkpoint parts the generator has no use for (reported as ignored, never silently dropped)
IGNORED_PREFIXES = (
    "cls_decoder.",
    "mvc_decoder.",
    "decoder.fc.",  # the pretraining ExprDecoder (the generator's decoder is affine: decoder.coeff_/bias_decoder)
    "decoder.zero_logit.",
    "grad_reverse_discriminator.",
    "batch_encoder.",
    "dsbn.",
    "bn.",
    "sim.",
    "creterion_cce.",
    "flag_encoder.",
)


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the generator: the scGPT encoder sizes plus the perturbation-flag padding class."""

    encoder: ScGPTConfig
    #: padding index of the flag embedding; the tutorial passes ``pert_pad_id=0`` (the class default is 2)
    pert_pad_id: int = 0
    #: value fed at padded positions (the tutorial's ``pad_value = 0``)
    pad_value: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pert_pad_id not in (0, 1, 2):
            msg = f"`pert_pad_id` must be 0, 1 or 2 (one of the {N_PERT_CLASSES} flag classes), got {self.pert_pad_id}."
            raise ValueError(msg)


class _AffineExprDecoder(nn.Module):
    """The reference ``AffineExprDecoder`` with its defaults (no activation, no adaptive bias): ``A(h) x + b(h)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.coeff_decoder = ExprDecoder(d)
        self.bias_decoder = ExprDecoder(d)

    def forward(self, h: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.coeff_decoder.value(h) * values + self.bias_decoder.value(h)


class ScGPTGenerator(nn.Module):
    """``TransformerGenerator``: predicted expression of every input token given a control cell and flags.

    Submodule and parameter names match the reference state dict (``encoder``, ``value_encoder``, ``pert_encoder``,
    ``transformer_encoder``, ``decoder.coeff_decoder``, ``decoder.bias_decoder``).
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder
        self.encoder = _GeneEncoder(enc)
        self.value_encoder = _ValueEncoder(enc)
        self.pert_encoder = nn.Embedding(N_PERT_CLASSES, enc.d_model, padding_idx=cfg.pert_pad_id)
        self.transformer_encoder = _TransformerEncoder(enc)
        self.decoder = _AffineExprDecoder(enc.d_model)

    def forward(
        self,
        tokens: torch.Tensor,
        values: torch.Tensor,
        pert_flags: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted value of every token ``(batch, n)`` (the reference's ``output["mlm_output"]``).

        Parameters
        ----------
        tokens, values, pert_flags
            ``(batch, n)`` vocabulary ids, input values (log-normalised expression of the control cell) and flags.
        lengths
            ``(batch,)`` real tokens per row when rows are right-padded (``None``: nothing is padded, as the
            reference's ``include_zero_gene="all"`` path whose padding mask is all False).
        """
        x = _per_unique(self.encoder, tokens) + _per_unique(self.value_encoder, values) + self.pert_encoder(pert_flags)
        mask = None if lengths is None else ScGPTEncoder.attention_mask(lengths, tokens.shape[1])
        for layer in self.transformer_encoder.layers:
            x = layer(x, mask)
        return self.decoder(x, values)


def _per_unique(encode, x: torch.Tensor) -> torch.Tensor:
    """``encode(x)`` for a token-wise ``encode`` (each output row a function of its own input element only).

    The gene encoder (embedding + LayerNorm) and the value encoder (clamp, Linear-ReLU-Linear, LayerNorm) map each
    token on its own, and a batch holds few distinct inputs (the same genes in every row, ~96% zero values), so they
    run once per distinct input and the rows are gathered back: the same forward values, and, through the gather's
    backward (a sum of the gradients of the tokens sharing an input), the same parameter gradients as running them
    on every token (``tests/models/test_scgpt_generator.py`` checks both against the full computation).
    """
    u, inv = torch.unique(x, return_inverse=True)
    return F.embedding(inv, encode(u))


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference ``scgpt.loss.masked_mse_loss``: ``sum((pred*m - target*m)^2) / sum(m)``."""
    m = mask.to(pred.dtype)
    return F.mse_loss(pred * m, target * m, reduction="sum") / m.sum()


# ---------------------------------------------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------------------------------------------


def _init_linear_(module: nn.Linear, generator: torch.Generator) -> None:
    bound = 1.0 / math.sqrt(module.weight.shape[1])  # kaiming_uniform_(a=sqrt(5)) and the torch default bias
    module.weight.uniform_(-bound, bound, generator=generator)
    if module.bias is not None:
        module.bias.uniform_(-bound, bound, generator=generator)


def init_new_parts_(model: ScGPTGenerator, generator: torch.Generator) -> None:
    """Seeded torch-default initialisation of the parts a pretrained scGPT lacks (flag embedding, affine decoder).

    ``nn.Embedding``: standard normal with the padding row zero; ``nn.Linear``: Kaiming-uniform weights and uniform
    biases of bound ``1/sqrt(fan_in)`` - torch's defaults, drawn from ``generator``.
    """
    with torch.no_grad():
        w = model.pert_encoder.weight
        w.normal_(0.0, 1.0, generator=generator)
        w[model.cfg.pert_pad_id].zero_()
        for module in model.decoder.modules():
            if isinstance(module, nn.Linear):
                _init_linear_(module, generator)


def build_random_generator(cfg: GeneratorConfig, seed: int) -> ScGPTGenerator:
    """A generator with seeded random weights (encoder as :func:`~._scgpt_model.build_random`, new parts torch-default).

    Independent of the global torch RNG.
    """
    from ._scgpt_model import init_random_

    model = ScGPTGenerator(cfg)
    gen = torch.Generator().manual_seed(int(seed))
    init_random_(model, gen)  # encoder, value encoder, transformer (and, harmlessly, the decoder's Linear layers)
    init_new_parts_(model, torch.Generator().manual_seed(int(seed) + 1))
    return model


@dataclass
class LoadReport:
    """What happened to every tensor when a generator was initialised from a checkpoint."""

    kind: str  #: "pretrained" (an scGPT foundation checkpoint) or "generator" (a fine-tuned generator checkpoint)
    loaded: list[str]  #: generator keys filled from the checkpoint
    new: list[str]  #: generator keys not in the checkpoint (freshly initialised)
    ignored: list[str]  #: checkpoint keys the generator does not use (known heads)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_loaded": len(self.loaded),
            "n_new": len(self.new),
            "n_ignored": len(self.ignored),
            "loaded": list(self.loaded),
            "new": list(self.new),
            "ignored": list(self.ignored),
        }


def generator_state_from_checkpoint(
    state: Mapping[str, torch.Tensor], model: ScGPTGenerator
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map a checkpoint onto ``model``'s names and say which key was loaded, new or ignored.

    A state dict with ``pert_encoder.*`` is a generator checkpoint (e.g. the tutorial's ``best_model.pt``): every
    generator tensor must be in it. Otherwise it is a pretrained scGPT checkpoint: the tutorial's
    ``load_param_prefixs`` (``encoder``, ``value_encoder``, ``transformer_encoder``) are loaded and must be complete;
    the flag embedding and the affine decoder are new. Both attention namings (``in_proj``, flash ``Wqkv``) are
    accepted. Any other checkpoint tensor that is not a known head raises.
    """
    wanted = model.state_dict()
    canon = {canonical_key(k): (k, v) for k, v in state.items()}
    kind = "generator" if any(k.startswith("pert_encoder.") for k in canon) else "pretrained"
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    for new, (key, value) in canon.items():
        usable = new in wanted and (kind == "generator" or new.startswith(PRETRAINED_PREFIXES))
        if usable:
            if tuple(value.shape) != tuple(wanted[new].shape):
                msg = (
                    f"Checkpoint tensor {key!r} has shape {tuple(value.shape)} but the generator built from "
                    f"args.json/vocab.json has {tuple(wanted[new].shape)}; the weights do not belong to this "
                    "args.json/vocab.json."
                )
                raise ValueError(msg)
            mapped[new] = value
        elif new.startswith(IGNORED_PREFIXES) or (kind == "pretrained" and new.startswith("decoder.")):
            ignored.append(key)
        else:
            unexpected.append(key)
    if unexpected:
        shown = ", ".join(unexpected[:6])
        msg = (
            f"The checkpoint holds {len(unexpected)} tensor(s) that are neither scGPT generator parameters nor known "
            f"heads ({shown}); refusing to guess. Is it an scGPT checkpoint with a matching args.json?"
        )
        raise ValueError(msg)
    new_keys = [k for k in wanted if k not in mapped]
    required = [k for k in new_keys if kind == "generator" or k.startswith(PRETRAINED_PREFIXES)]
    if required:
        shown = ", ".join(required[:6])
        msg = (
            f"The {kind} checkpoint lacks {len(required)} tensor(s) the generator needs ({shown}); refusing a "
            "partially random model. Check that the file is complete and matches args.json (nlayers, embsize)."
        )
        raise ValueError(msg)
    report = LoadReport(kind=kind, loaded=sorted(mapped), new=new_keys, ignored=sorted(ignored))
    return mapped, report


def state_dict_in_naming(model: ScGPTGenerator, naming: str = "in_proj") -> dict[str, torch.Tensor]:
    """``model``'s tensors (copies) in the ``in_proj`` (PyTorch) or ``Wqkv`` (flash-attention) attention naming."""
    import re

    if naming not in {"in_proj", "Wqkv"}:
        msg = f"`naming` must be 'in_proj' or 'Wqkv', got {naming!r}."
        raise ValueError(msg)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if naming == "Wqkv":
        state = {re.sub(r"self_attn\.in_proj_(weight|bias)$", r"self_attn.Wqkv.\1", k): v for k, v in state.items()}
    return state


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------


def load_scgpt_generator(
    path: str | Any,
    *,
    weights: str = "pretrained",
    weights_file: str | Any | None = None,
    seed: int = 0,
    pert_pad_id: int = 0,
    overrides: Mapping[str, int] | None = None,
) -> tuple[ScGPTGenerator, dict[str, int], dict[str, Any], LoadReport]:
    """Build the generator from an scGPT checkpoint folder (``args.json``, ``vocab.json``, weights).

    Parameters
    ----------
    path
        Folder with ``args.json`` and ``vocab.json`` (and ``best_model.pt`` for ``weights="pretrained"``).
    weights
        ``"pretrained"``: the weights file is read; a pretrained scGPT checkpoint gives the encoder, value encoder
        and transformer (the tutorial's ``load_param_prefixs``), the flag embedding and decoder are new (seeded by
        ``seed``); a generator checkpoint saved by the reference tutorial (``pert_encoder.*``, ``decoder.*``) is
        loaded whole. ``"random"``: the same architecture and vocabulary with seeded random weights.
    weights_file
        Weights to read instead of the folder's ``best_model.pt``/``model.safetensors`` (e.g. the tutorial's
        ``save_dir/best_model.pt``).
    seed
        Seed of the random weights / new parts.
    pert_pad_id
        Padding class of the flag embedding (the tutorial's 0).
    overrides
        ``args.json`` sizes to override (``nlayers``, ``embsize``, ``nheads``, ``d_hid``); only with
        ``weights="random"`` (a small configuration for tests).

    Returns
    -------
    ``(module, vocab, args, report)``; ``report`` says which tensor was loaded, new or ignored (all new for random).
    """
    from pathlib import Path

    from .._utils import logger
    from ._scgpt_io import PAD_TOKEN, find_weights, read_args, read_vocab

    directory = Path(path).expanduser()
    for fname in ("args.json", "vocab.json"):
        if not (directory / fname).is_file():
            msg = f"{str(directory)!r} is not an scGPT checkpoint folder: {fname} is missing."
            raise FileNotFoundError(msg)
    if weights not in {"pretrained", "random"}:
        msg = f"`weights` must be 'pretrained' or 'random', got {weights!r}."
        raise ValueError(msg)
    vocab = read_vocab(directory / "vocab.json")
    args = read_args(directory / "args.json")
    if overrides:
        if weights != "random":
            msg = "`overrides` (architecture sizes) only apply to weights='random'; a checkpoint fixes its sizes."
            raise ValueError(msg)
        bad = sorted(set(overrides) - {"nlayers", "embsize", "nheads", "d_hid"})
        if bad:
            msg = f"Unknown architecture overrides {bad}; use nlayers, embsize, nheads, d_hid."
            raise ValueError(msg)
        args = {**args, **{k: int(v) for k, v in overrides.items()}}
    enc = ScGPTConfig.from_args(args, ntoken=len(vocab), pad_id=vocab[PAD_TOKEN])
    cfg = GeneratorConfig(enc, pert_pad_id=int(pert_pad_id))
    module = build_random_generator(cfg, seed)
    if weights == "random":
        keys = list(module.state_dict())
        report = LoadReport(kind="random", loaded=[], new=keys, ignored=[])
        logger.info("scGPT generator: seeded random weights (seed %d), %d tensors", seed, len(keys))
        return module, vocab, args, report
    from ._io import UnsafeFileError, load_state_dict

    wpath = Path(weights_file).expanduser() if weights_file is not None else find_weights(directory)
    try:
        state = load_state_dict(wpath)
    except UnsafeFileError:
        raise
    except Exception as err:  # truncated/corrupt files raise many different errors
        msg = f"Could not read the scGPT weights {str(wpath)!r} ({type(err).__name__}: {err}); download it again."
        raise ValueError(msg) from err
    mapped, report = generator_state_from_checkpoint(state, module)
    missing, unexpected = module.load_state_dict(mapped, strict=False)
    if unexpected or set(missing) != set(report.new):  # every key must be accounted for in the report
        msg = f"Internal error: load report disagrees with torch ({missing}, {unexpected}); please report it."
        raise RuntimeError(msg)
    for p in module.parameters():
        if not bool(torch.isfinite(p).all()):
            msg = f"The scGPT weights {str(wpath)!r} hold NaN or infinite values; download them again."
            raise ValueError(msg)
    logger.info(
        "scGPT generator from %s (%s checkpoint): %d tensors loaded, %d new (%s), %d checkpoint tensors ignored (%s)",
        wpath.name,
        report.kind,
        len(report.loaded),
        len(report.new),
        ", ".join(report.new) or "-",
        len(report.ignored),
        ", ".join(report.ignored[:4]) + (" ..." if len(report.ignored) > 4 else "") or "-",
    )
    return module, vocab, args, report
