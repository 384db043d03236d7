"""scGPT as a cell classifier: the encoder and the reference ``ClsDecoder`` on the ``<cls>`` state, in plain torch.

Pure tensor code, no AnnData. The head is scGPT's ``ClsDecoder`` (``nlayers_cls=3``: two blocks of Linear, ReLU,
LayerNorm, then a Linear to the classes) on ``cell_emb_style="cls"`` (the last layer's ``<cls>`` state), as
``TransformerModel(..., CLS=True)`` of the annotation tutorial. Parameter names are the reference's
(``encoder.*``, ``value_encoder.*``, ``transformer_encoder.*``, ``cls_decoder.*``). In training mode the encoder runs
with the reference's dropouts (after the value encoder, on attention weights, after attention, inside and after the
feed-forward block; ``dropout=0.2`` in the tutorial). As in the tutorial, the head's hidden layers start from the
checkpoint's ``cls_decoder.*`` tensors where their shapes match (the tutorial's "only load params that are in the
model and match the size"; only ``out_layer`` is new when the class count differs), and the ``<cls>`` token's input
value is 0 (``tokenize_and_pad_batch(append_cls=True)``; ``embed_data`` uses ``pad_value`` instead).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._scgpt_model import ScGPTConfig, ScGPTEncoder, build_random
from ._tokens import TokenizedCells

__all__ = ["ClsDecoder", "ScGPTClassifier"]


class ClsDecoder(nn.Module):
    """The reference ``ClsDecoder``: ``nlayers - 1`` blocks of Linear-ReLU-LayerNorm, then ``out_layer``."""

    def __init__(self, d_model: int, n_cls: int, nlayers: int = 3) -> None:
        super().__init__()
        self._decoder = nn.ModuleList()
        for _ in range(nlayers - 1):
            self._decoder.append(nn.Linear(d_model, d_model))
            self._decoder.append(nn.ReLU())
            self._decoder.append(nn.LayerNorm(d_model))
        self.out_layer = nn.Linear(d_model, n_cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._decoder:
            x = layer(x)
        return self.out_layer(x)


class ScGPTClassifier(nn.Module):
    """scGPT encoder + ``ClsDecoder`` on the ``<cls>`` state.

    Parameters
    ----------
    encoder
        The scGPT encoder (copied: the loaded model's own weights stay untouched).
    n_classes
        Number of classes.
    pad_id, pad_value
        ``<pad>`` token id and the input value of padding.
    dropout
        Dropout probability while training (the tutorial's 0.2).
    nlayers_cls
        Layers of the head (the reference default 3).
    seed
        Seed of the head's initialisation (torch's default Linear init, drawn from a private generator).
    head_state
        The checkpoint's ``cls_decoder.*`` tensors (prefix removed); those whose name and shape match the new head
        replace its initial values (the tutorial's loading).
    cls_value
        Input value of the ``<cls>`` token (the annotation tutorial's 0).
    """

    family = "scgpt"

    def __init__(
        self,
        encoder: ScGPTEncoder,
        n_classes: int,
        *,
        pad_id: int,
        pad_value: float,
        dropout: float = 0.2,
        nlayers_cls: int = 3,
        seed: int = 0,
        head_state: Mapping[str, torch.Tensor] | None = None,
        cls_value: float = 0.0,
    ) -> None:
        super().__init__()
        self.cls_value = float(cls_value)
        self.cfg: ScGPTConfig = encoder.cfg
        self.n_classes = int(n_classes)
        self.pad_id = int(pad_id)
        self.pad_value = float(pad_value)
        self.dropout = float(dropout)
        self.nlayers_cls = int(nlayers_cls)
        self.encoder_net = copy.deepcopy(encoder)
        for p in self.encoder_net.parameters():
            p.requires_grad_(True)
        self.cls_decoder = ClsDecoder(self.cfg.d_model, self.n_classes, nlayers=self.nlayers_cls)
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for m in self.cls_decoder.modules():
                if isinstance(m, nn.Linear):
                    bound = 1.0 / math.sqrt(m.weight.shape[1])
                    m.weight.uniform_(-bound, bound, generator=gen)
                    m.bias.uniform_(-bound, bound, generator=gen)
            own = self.cls_decoder.state_dict()
            for name, value in (head_state or {}).items():
                if name in own and tuple(value.shape) == tuple(own[name].shape):
                    own[name].copy_(value)

    @classmethod
    def random(cls, cfg: ScGPTConfig, n_classes: int, *, seed: int, **kwargs) -> ScGPTClassifier:
        """A classifier whose encoder, too, is random (the random-initialisation control), seeded.

        The encoder's seed is derived from ``seed`` (:func:`~scfmkit.models._bert_classifier.init_seed`).
        """
        from ._bert_classifier import init_seed

        return cls(build_random(cfg, init_seed(seed)), n_classes, seed=seed, **kwargs)

    # ------------------------------------------------------------------ structure used by the training loop
    def layer_modules(self) -> list[nn.Module]:
        """The transformer layers in order."""
        return list(self.encoder_net.transformer_encoder.layers)

    def embedding_modules(self) -> list[nn.Module]:
        """Gene and value encoders (what the tutorial's ``freeze=True`` freezes)."""
        return [self.encoder_net.encoder, self.encoder_net.value_encoder]

    def collate(self, tokens: TokenizedCells, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Right-padded tokens (``<pad>``) and values (``pad_value``, ``<cls>``: ``cls_value``) and the lengths."""
        lens = tokens.lengths[idx].astype(np.int64)
        n = int(lens.max())
        tok = np.full((len(idx), n), self.pad_id, np.int64)
        val = np.full((len(idx), n), self.pad_value, np.float32)
        for r, i in enumerate(idx):
            tok[r, : lens[r]] = tokens[i]
            val[r, : lens[r]] = tokens.values_of(i)
        val[:, 0] = self.cls_value
        return {"tokens": torch.from_numpy(tok), "values": torch.from_numpy(val), "lengths": torch.from_numpy(lens)}

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)``."""
        if not self.training:
            cell = self.encoder_net(tokens, values, lengths, cls_only=True)
        else:
            cell = self._train_encoder(tokens, values, lengths)
        return self.cls_decoder(cell)

    def _train_encoder(self, tokens: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        enc, p = self.encoder_net, self.dropout
        x = enc.encoder(tokens) + F.dropout(enc.value_encoder(values), p, True)
        mask = enc.attention_mask(lengths, tokens.shape[1])
        for layer in enc.transformer_encoder.layers:
            if layer.pre_norm:
                x = layer.norm1(x)
                x = x + F.dropout(_attention(layer.self_attn, x, mask, p), p, True)
                x = layer.norm2(x)
                x = x + F.dropout(layer.linear2(F.dropout(F.relu(layer.linear1(x)), p, True)), p, True)
            else:
                x = layer.norm1(x + F.dropout(_attention(layer.self_attn, x, mask, p), p, True))
                x = layer.norm2(x + F.dropout(layer.linear2(F.dropout(F.relu(layer.linear1(x)), p, True)), p, True))
        return x[:, 0]

    def state_dict_reference(self) -> dict[str, torch.Tensor]:
        """Weights in the reference ``TransformerModel``'s names (encoder parts and ``cls_decoder.*``)."""
        out = {k: v.detach().cpu() for k, v in self.encoder_net.state_dict().items()}
        out.update({f"cls_decoder.{k}": v.detach().cpu() for k, v in self.cls_decoder.state_dict().items()})
        return {k: v.contiguous().clone() for k, v in out.items()}

    def load_state_dict_reference(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`state_dict_reference`'s layout (every key required)."""
        enc = {k: v for k, v in state.items() if not k.startswith("cls_decoder.")}
        head = {k.removeprefix("cls_decoder."): v for k, v in state.items() if k.startswith("cls_decoder.")}
        self.encoder_net.load_state_dict(enc)
        self.cls_decoder.load_state_dict(head)


def _attention(attn, x: torch.Tensor, mask: torch.Tensor | None, p: float) -> torch.Tensor:
    """The encoder's self-attention with dropout ``p`` on the attention weights."""
    b, n, d = x.shape
    h = attn.nhead
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, d))
