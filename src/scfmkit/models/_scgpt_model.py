"""The scGPT transformer encoder in plain torch (no flash-attn, no ``scgpt`` package).

Only the parts that produce embeddings are built: the gene token encoder (embedding + LayerNorm), the continuous
value encoder (clamp, Linear-ReLU-Linear, LayerNorm) and the stack of post-norm transformer encoder layers
(self-attention, ReLU feed-forward). The expression decoder (``decoder.*``, the reference ``ExprDecoder``) is an
optional head loaded beside the encoder (:func:`expr_decoder_from_state`); MVC/classification decoders of a
checkpoint are recognised and ignored.
Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`: with a key padding mask on padded
batches (:meth:`ScGPTEncoder.forward`), per cell without a mask on packed ones (:meth:`ScGPTEncoder.forward_packed`,
used for embeddings).

Parameter names follow the reference PyTorch layout (``self_attn.in_proj_weight``); checkpoints saved with
flash-attention (``self_attn.Wqkv.*``, optionally under ``self_attn._impl.``) are renamed on load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._inference_ops import add_fresh

__all__ = [
    "ExprDecoder",
    "ScGPTConfig",
    "ScGPTEncoder",
    "expr_decoder_from_state",
    "map_state_dict",
    "random_state_dict",
]

# value clamp of the reference ContinuousValueEncoder
VALUE_CLAMP = 512.0

# prefixes of checkpoint parts that are not needed for embeddings (decoders, heads, batch encoders)
HEAD_PREFIXES = (
    "decoder.",
    "cls_decoder.",
    "mvc_decoder.",
    "grad_reverse_discriminator.",
    "batch_encoder.",
    "dsbn.",
    "bn.",
    "sim.",
    "creterion_cce.",
)


@dataclass(frozen=True)
class ScGPTConfig:
    """Architecture of an scGPT checkpoint, read from its ``args.json``."""

    ntoken: int
    d_model: int = 512
    nhead: int = 8
    d_hid: int = 512
    nlayers: int = 12
    pad_id: int = 0
    pre_norm: bool = False
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_args(cls, args: Mapping[str, Any], *, ntoken: int, pad_id: int) -> ScGPTConfig:
        """Build from an ``args.json`` mapping with a clear error for unsupported checkpoints."""
        style = args.get("input_emb_style", "continuous")
        if style != "continuous":
            msg = (
                f"This scGPT checkpoint uses input_emb_style={style!r}; scfmkit supports the 'continuous' value "
                "encoder of the released whole-body and organ checkpoints."
            )
            raise ValueError(msg)
        missing = [k for k in ("embsize", "nheads", "d_hid", "nlayers") if k not in args]
        if missing:
            msg = f"args.json lacks {missing}; it is not an scGPT model configuration."
            raise ValueError(msg)
        cfg = cls(
            ntoken=int(ntoken),
            d_model=int(args["embsize"]),
            nhead=int(args["nheads"]),
            d_hid=int(args["d_hid"]),
            nlayers=int(args["nlayers"]),
            pad_id=int(pad_id),
            pre_norm=bool(args.get("pre_norm", False)),
        )
        if cfg.d_model % cfg.nhead:
            msg = f"embsize {cfg.d_model} is not divisible by nheads {cfg.nhead} in args.json."
            raise ValueError(msg)
        return cfg


class _GeneEncoder(nn.Module):
    def __init__(self, cfg: ScGPTConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.ntoken, cfg.d_model, padding_idx=cfg.pad_id)
        self.enc_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(tokens))


class _ValueEncoder(nn.Module):
    def __init__(self, cfg: ScGPTConfig) -> None:
        super().__init__()
        self.linear1 = nn.Linear(1, cfg.d_model)
        self.linear2 = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = values.unsqueeze(-1).clamp(max=VALUE_CLAMP)
        return self.norm(self.linear2(F.relu(self.linear1(x))))


class _SelfAttention(nn.Module):
    """Multi-head self-attention with the fused ``in_proj`` layout of :class:`torch.nn.MultiheadAttention`."""

    def __init__(self, cfg: ScGPTConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.nhead = cfg.nhead
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, query_rows: int | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.nhead
        if query_rows is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
            q, k, v = qkv.view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        else:  # only the first `query_rows` positions are needed as queries (the <cls> token)
            w_q, w_kv = self.in_proj_weight.split([d, 2 * d])
            b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
            q = F.linear(x[:, :query_rows], w_q, b_q).view(b, query_rows, h, d // h).transpose(1, 2)
            k, v = F.linear(x, w_kv, b_kv).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, -1, d)
        return self.out_proj(out)

    def forward_packed(self, x: torch.Tensor, bounds: list[int], rows: torch.Tensor | None = None) -> torch.Tensor:
        """Attention on packed sequences: ``x`` is ``(total_tokens, d)``, sequence ``i`` rows ``bounds[i]:bounds[i+1]``.

        Each sequence attends only to itself, so no mask and no padding work. With ``rows`` (one row per sequence,
        its ``<cls>``), only those rows are queries: ``(n_seq, d)``.
        """
        t, d = x.shape
        h = self.nhead
        if rows is None:
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(t, 3, h, d // h).unbind(1)
        else:
            w_q, w_kv = self.in_proj_weight.split([d, 2 * d])
            b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
            q = F.linear(x[rows], w_q, b_q).view(-1, h, d // h)
            k, v = F.linear(x, w_kv, b_kv).view(t, 2, h, d // h).unbind(1)
        # in q's dtype (that of autocast, if on): `out=` ops are not autocast, so the weights are cast here
        out = q.new_empty((q.shape[0], d))
        w_out, b_out = self.out_proj.weight.t().to(q.dtype), self.out_proj.bias.to(q.dtype)
        for i in range(len(bounds) - 1):
            lo, hi = bounds[i], bounds[i + 1]
            qs = q[lo:hi] if rows is None else q[i : i + 1]
            # (1, heads, tokens, head_dim) strided views of the packed rows
            a = F.scaled_dot_product_attention(
                qs.transpose(0, 1)[None], k[lo:hi].transpose(0, 1)[None], v[lo:hi].transpose(0, 1)[None]
            )
            # the output projection written straight into the cell's rows (no copy of the attention output)
            torch.addmm(
                b_out, a[0].transpose(0, 1).reshape(-1, d), w_out, out=out[lo:hi] if rows is None else out[i : i + 1]
            )
        return out


class _EncoderLayer(nn.Module):
    def __init__(self, cfg: ScGPTConfig) -> None:
        super().__init__()
        self.self_attn = _SelfAttention(cfg)
        self.linear1 = nn.Linear(cfg.d_model, cfg.d_hid)
        self.linear2 = nn.Linear(cfg.d_hid, cfg.d_model)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.pre_norm = cfg.pre_norm

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.relu(self.linear1(x)))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, query_rows: int | None = None) -> torch.Tensor:
        if self.pre_norm:  # the reference's flash "pre" scheme: the residual branch starts from the normed input
            x = self.norm1(x)
            x = (x if query_rows is None else x[:, :query_rows]) + self.self_attn(x, attn_mask, query_rows)
            x = self.norm2(x)
            return x + self._ff(x)
        res = x if query_rows is None else x[:, :query_rows]
        x = self.norm1(res + self.self_attn(x, attn_mask, query_rows))
        return self.norm2(x + self._ff(x))

    def forward_packed(self, x: torch.Tensor, bounds: list[int], rows: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward` on packed sequences (see :meth:`_SelfAttention.forward_packed`); ``rows``: only those.

        Inference only: the residual sums and the ReLU are computed in place on fresh outputs (same values; under
        autocast the sum is in the promoted dtype, as in :meth:`forward`).
        """

        def ff(y: torch.Tensor) -> torch.Tensor:
            return self.linear2(F.relu_(self.linear1(y)))

        if self.pre_norm:
            x = self.norm1(x)
            x = add_fresh(self.self_attn.forward_packed(x, bounds, rows), x if rows is None else x[rows])
            x = self.norm2(x)
            return add_fresh(ff(x), x)
        res = x if rows is None else x[rows]
        x = self.norm1(add_fresh(self.self_attn.forward_packed(x, bounds, rows), res))
        return self.norm2(add_fresh(ff(x), x))


class ExprDecoder(nn.Module):
    """The reference expression decoder (``scgpt.model.model.ExprDecoder``).

    An MLP from each gene's last-layer state to its predicted expression value, optionally with the zero-probability
    branch (``explicit_zero_prob``).

    Layer names match the checkpoint's ``decoder.fc.*`` / ``decoder.zero_logit.*``; batch labels are not supported.
    The perturbation generator's affine decoder (:mod:`._scgpt_generator`) is two of these (``coeff_decoder``,
    ``bias_decoder``) read through :meth:`value`. ``nn.LeakyReLU()`` has torch's default slope 0.01, as the reference.
    """

    def __init__(self, d_model: int, *, explicit_zero_prob: bool = False) -> None:
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(d_model, d_model),
                nn.LeakyReLU(),
                nn.Linear(d_model, d_model),
                nn.LeakyReLU(),
                nn.Linear(d_model, 1),
            )

        self.fc = mlp()
        self.explicit_zero_prob = explicit_zero_prob
        if explicit_zero_prob:
            self.zero_logit = mlp()

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """The ``fc`` branch alone: ``(batch, seq, d_model)`` -> ``(batch, seq)`` (the reference's ``pred``)."""
        return self.fc(x).squeeze(-1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: ``(batch, seq, d_model)`` transformer output; returns ``pred`` (and ``zero_probs``), ``(batch, seq)``.

        As the reference, without sampling: ``pred`` is the value the reference returns as ``mlm_output``.
        """
        out = {"pred": self.value(x)}
        if self.explicit_zero_prob:
            out["zero_probs"] = torch.sigmoid(self.zero_logit(x).squeeze(-1))
        return out


def expr_decoder_from_state(state: Mapping[str, torch.Tensor], cfg: ScGPTConfig) -> ExprDecoder | None:
    """The expression decoder of a checkpoint's ``decoder.*`` tensors.

    ``None`` when the checkpoint has none (or one that reads batch labels, which scfmkit does not model).
    """
    keys = {canonical_key(k): k for k in state}
    sub = {new[len("decoder.") :]: state[old] for new, old in keys.items() if new.startswith("decoder.")}
    if not sub:
        return None
    w0 = sub.get("fc.0.weight")
    if w0 is None or tuple(w0.shape) != (cfg.d_model, cfg.d_model):
        return None
    dec = ExprDecoder(cfg.d_model, explicit_zero_prob=any(k.startswith("zero_logit.") for k in sub))
    wanted = dec.state_dict()
    bad = [k for k in wanted if k not in sub or tuple(sub[k].shape) != tuple(wanted[k].shape)]
    if bad:
        msg = f"The checkpoint's expression decoder is incomplete or mis-shaped ({', '.join(bad[:4])})."
        raise ValueError(msg)
    dec.load_state_dict({k: sub[k] for k in wanted})
    for p in dec.parameters():
        p.requires_grad_(False)
    return dec.eval()


class _TransformerEncoder(nn.Module):
    def __init__(self, cfg: ScGPTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_EncoderLayer(cfg) for _ in range(cfg.nlayers)])


class ScGPTEncoder(nn.Module):
    """The embedding path of scGPT's ``TransformerModel`` (``_encode``), inference only.

    Submodule names match the reference state dict (``encoder``, ``value_encoder``, ``transformer_encoder``).
    """

    def __init__(self, cfg: ScGPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = _GeneEncoder(cfg)
        self.value_encoder = _ValueEncoder(cfg)
        self.transformer_encoder = _TransformerEncoder(cfg)

    @staticmethod
    def attention_mask(lengths: torch.Tensor, n: int) -> torch.Tensor | None:
        """Boolean ``(batch, 1, 1, n)`` mask, True where a key is a real token; ``None`` when nothing is padded."""
        if bool((lengths == n).all()):
            return None
        keep = torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]
        return keep[:, None, None, :]

    def forward(
        self, tokens: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, *, cls_only: bool = True
    ) -> torch.Tensor:
        """Hidden states of the last layer.

        Parameters
        ----------
        tokens
            ``(batch, n)`` token ids, ``<cls>`` first, right-padded with the ``<pad>`` id.
        values
            ``(batch, n)`` input values (``pad_value`` at ``<cls>`` and padding, bins elsewhere).
        lengths
            ``(batch,)`` number of real tokens per row (including ``<cls>``).
        cls_only
            Return only the ``<cls>`` state ``(batch, d)``; the last layer then computes the ``<cls>`` row only.

        Returns
        -------
        ``(batch, d)`` when ``cls_only``, else ``(batch, n, d)``.
        """
        x = self.encoder(tokens) + self.value_encoder(values)
        mask = self.attention_mask(lengths, tokens.shape[1])
        layers = self.transformer_encoder.layers
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            x = layer(x, mask, 1 if (cls_only and last) else None)
        return x[:, 0] if cls_only else x

    def forward_packed(
        self,
        tokens: torch.Tensor,
        values: torch.Tensor,
        bounds: list[int],
        *,
        cls_only: bool = True,
        per_sequence: bool | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` on packed cells, with no padding work at all (the same values as the padded path).

        Parameters
        ----------
        tokens, values
            1-d: the cells' token ids and input values one after another (each cell ``<cls>`` first).
        bounds
            Python ints from 0: cell ``i`` is ``tokens[bounds[i]:bounds[i + 1]]`` (host-side, no device sync).
        cls_only
            Return only each cell's ``<cls>`` state; the last layer then computes those rows only.
        per_sequence
            Run each cell through all layers on its own, one cell per CPU thread (default: on CPU), so that its
            intermediates stay in the CPU caches; ``False`` runs layer by layer over the whole batch (the GPU path).
            The same values.

        Returns
        -------
        ``(n_cells, d)`` when ``cls_only``, else ``(total_tokens, d)``.
        """
        if per_sequence is None:
            per_sequence = tokens.device.type == "cpu"
        if per_sequence and len(bounds) > 2:
            from ._cpu_threads import map_sequences

            def one(seg: tuple[int, int]) -> torch.Tensor:
                lo, hi = seg
                return self.forward_packed(tokens[lo:hi], values[lo:hi], [0, hi - lo], cls_only=cls_only)

            return torch.cat(map_sequences(one, list(pairwise(bounds))))
        x = self.encoder(tokens) + self.value_encoder(values)
        layers = self.transformer_encoder.layers
        starts = torch.tensor(bounds[:-1], device=tokens.device) if cls_only else None
        for i, layer in enumerate(layers):
            x = layer.forward_packed(x, bounds, starts if i == len(layers) - 1 else None)
        if cls_only and not layers:
            x = x[starts]
        return x

    def attention(
        self, tokens: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, *, layer: int
    ) -> torch.Tensor:
        """The softmax attention weights of the 1-based ``layer``: ``(batch, heads, query, key)``.

        The layers before it run as in :meth:`forward`; the weights are those the layer's attention applies (to
        its normed input under ``pre_norm``).
        """
        layers = self.transformer_encoder.layers
        if not 1 <= layer <= len(layers):
            msg = f"`layer` must be between 1 and {len(layers)}, got {layer}."
            raise ValueError(msg)
        x = self.encoder(tokens) + self.value_encoder(values)
        mask = self.attention_mask(lengths, tokens.shape[1])
        for i in range(layer - 1):
            x = layers[i](x, mask)
        lay = layers[layer - 1]
        if lay.pre_norm:
            x = lay.norm1(x)
        att = lay.self_attn
        b, n, d = x.shape
        q, k, _ = (
            F.linear(x, att.in_proj_weight, att.in_proj_bias)
            .view(b, n, 3, att.nhead, d // att.nhead)
            .permute(2, 0, 3, 1, 4)
        )
        scores = q @ k.transpose(-1, -2) / (d // att.nhead) ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1)


# ---------------------------------------------------------------------------------------------------------------
# checkpoint key names
# ---------------------------------------------------------------------------------------------------------------

_RENAMES = (
    (re.compile(r"self_attn\._impl\.Wqkv\.(weight|bias)$"), r"self_attn.in_proj_\1"),
    (re.compile(r"self_attn\.Wqkv\.(weight|bias)$"), r"self_attn.in_proj_\1"),
    (re.compile(r"self_attn\._impl\.out_proj\."), "self_attn.out_proj."),
)


def canonical_key(key: str) -> str:
    """Map any released scGPT parameter name to the ``in_proj`` naming (strips a ``module.`` DDP prefix)."""
    if key.startswith("module."):
        key = key[len("module.") :]
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def map_state_dict(
    state: Mapping[str, torch.Tensor], model: ScGPTEncoder
) -> tuple[dict[str, torch.Tensor], list[str], list[str], list[str]]:
    """Rename checkpoint keys to ``model``'s names.

    Returns
    -------
    ``(mapped, missing, unexpected, ignored)``: tensors to load; model keys absent from the checkpoint; checkpoint
    keys that are neither used nor known heads; known head keys that embeddings do not need.
    """
    wanted = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    ignored: list[str] = []
    for key, value in state.items():
        new = canonical_key(key)
        if new in wanted:
            if tuple(value.shape) != tuple(wanted[new].shape):
                msg = (
                    f"Checkpoint tensor {key!r} has shape {tuple(value.shape)} but args.json/vocab.json imply "
                    f"{tuple(wanted[new].shape)}; the weights file does not belong to this args.json/vocab.json."
                )
                raise ValueError(msg)
            mapped[new] = value
        elif new.startswith(HEAD_PREFIXES):
            ignored.append(key)
        else:
            unexpected.append(key)
    missing = [k for k in wanted if k not in mapped]
    return mapped, missing, unexpected, ignored


# ---------------------------------------------------------------------------------------------------------------
# random weights
# ---------------------------------------------------------------------------------------------------------------


def init_random_(model: ScGPTEncoder, generator: torch.Generator) -> None:
    """Seeded random initialisation in the reference's scheme.

    Token embedding uniform(-0.1, 0.1) (the reference ``init_weights``), linear layers Kaiming-uniform with
    uniform biases (torch defaults), fused attention input projection Xavier-uniform with zero bias (as
    :class:`torch.nn.MultiheadAttention`), LayerNorms at one/zero.
    """
    import math

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                fan_in = module.weight.shape[1]
                bound = 1.0 / math.sqrt(fan_in)
                # kaiming_uniform_(a=sqrt(5)) has the same bound 1/sqrt(fan_in)
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-bound, bound, generator=generator)
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, _SelfAttention):
                w = module.in_proj_weight
                a = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
                w.uniform_(-a, a, generator=generator)
                module.in_proj_bias.zero_()
        emb = model.encoder.embedding.weight
        emb.uniform_(-0.1, 0.1, generator=generator)
    # attention out_proj bias is zero in nn.MultiheadAttention
    for layer in model.transformer_encoder.layers:
        with torch.no_grad():
            layer.self_attn.out_proj.bias.zero_()


def build_random(cfg: ScGPTConfig, seed: int) -> ScGPTEncoder:
    """An :class:`ScGPTEncoder` with seeded random weights (independent of the global torch RNG)."""
    model = ScGPTEncoder(cfg)
    gen = torch.Generator().manual_seed(int(seed))
    init_random_(model, gen)
    return model


def _random_heads(cfg: ScGPTConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded tensors for the reference's expression decoder, classifier and MVC heads (layout only)."""
    d = cfg.d_model

    def lin(out_f: int, in_f: int, bias: bool = True) -> dict[str, torch.Tensor]:
        b = 1.0 / in_f**0.5
        out = {"weight": torch.empty(out_f, in_f).uniform_(-b, b, generator=generator)}
        if bias:
            out["bias"] = torch.empty(out_f).uniform_(-b, b, generator=generator)
        return out

    heads: dict[str, torch.Tensor] = {}
    for prefix, shape in (("decoder.fc.0", (d, d)), ("decoder.fc.2", (d, d)), ("decoder.fc.4", (1, d))):
        heads.update({f"{prefix}.{k}": v for k, v in lin(*shape).items()})
    for prefix, shape in (
        ("cls_decoder._decoder.0", (d, d)),
        ("cls_decoder._decoder.3", (d, d)),
        ("cls_decoder.out_layer", (1, d)),
    ):
        heads.update({f"{prefix}.{k}": v for k, v in lin(*shape).items()})
    for prefix in ("cls_decoder._decoder.2", "cls_decoder._decoder.5"):
        heads[f"{prefix}.weight"] = torch.ones(d)
        heads[f"{prefix}.bias"] = torch.zeros(d)
    heads.update({f"mvc_decoder.gene2query.{k}": v for k, v in lin(d, d).items()})
    heads.update({f"mvc_decoder.W.{k}": v for k, v in lin(d, d, bias=False).items()})
    return heads


def random_state_dict(
    cfg: ScGPTConfig, seed: int, *, naming: str = "in_proj", heads: bool = True
) -> dict[str, torch.Tensor]:
    """A seeded random state dict in a released checkpoint's key layout.

    ``naming="in_proj"`` uses PyTorch's ``self_attn.in_proj_weight``; ``naming="Wqkv"`` the flash-attention
    ``self_attn.Wqkv.weight``. With ``heads`` the decoder/MVC/classifier tensors of the reference model are added.
    """
    if naming not in {"in_proj", "Wqkv"}:
        msg = f"`naming` must be 'in_proj' or 'Wqkv', got {naming!r}."
        raise ValueError(msg)
    model = build_random(cfg, seed)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if naming == "Wqkv":
        state = {re.sub(r"self_attn\.in_proj_(weight|bias)$", r"self_attn.Wqkv.\1", k): v for k, v in state.items()}
    if heads:
        state.update(_random_heads(cfg, torch.Generator().manual_seed(int(seed) + 1)))
    return state
