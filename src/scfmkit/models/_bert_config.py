"""The BERT ``config.json`` fields and a lazily drawn random state dict, without importing torch.

Loading a Geneformer folder (tokenising needs its dictionaries, not its weights) reads these; torch is imported only
when the weights are first used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["ACTIVATIONS", "BertConfig", "LazyRandomStateDict"]

ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")


@dataclass(frozen=True)
class BertConfig:
    """The fields of a HuggingFace BERT ``config.json`` that inference needs."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    pad_token_id: int = 0
    initializer_range: float = 0.02

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        """Build from a parsed ``config.json``, refusing architectures this encoder does not implement."""
        if d.get("model_type", "bert") != "bert":
            msg = f"Expected a BERT config (model_type 'bert'), got {d.get('model_type')!r}."
            raise ValueError(msg)
        if d.get("position_embedding_type", "absolute") != "absolute":
            msg = f"Only absolute position embeddings are supported, got {d.get('position_embedding_type')!r}."
            raise ValueError(msg)
        if d.get("hidden_act", "relu") not in ACTIVATIONS:
            msg = f"Unsupported hidden_act {d.get('hidden_act')!r}; supported: {sorted(ACTIVATIONS)}."
            raise ValueError(msg)
        fields = cls.__dataclass_fields__
        kwargs = {k: d[k] for k in fields if k in d and d[k] is not None}
        missing = [
            k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if k not in kwargs
        ]
        if missing:
            msg = f"config.json lacks {missing}."
            raise ValueError(msg)
        kwargs.setdefault("intermediate_size", 4 * kwargs["hidden_size"])
        kwargs.setdefault("max_position_embeddings", 512)
        return cls(**kwargs)


class LazyRandomStateDict(Mapping):
    """``random_hf_state_dict(cfg, seed)`` (:mod:`._bert`), drawn on first access (tokenising needs no weights).

    The same weights as the eager call (same seed, same draw order); a read-only mapping, as the loaders use it.
    """

    def __init__(self, cfg: BertConfig, seed: int) -> None:
        self._cfg, self._seed = cfg, seed
        self._sd: dict[str, torch.Tensor] | None = None

    def _weights(self) -> dict[str, torch.Tensor]:
        if self._sd is None:
            from ._bert import random_hf_state_dict  # imports torch

            self._sd = random_hf_state_dict(self._cfg, self._seed)
        return self._sd

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._weights()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._weights())

    def __len__(self) -> int:
        return len(self._weights())

    def __contains__(self, key: object) -> bool:
        return key in self._weights()
