"""A BERT encoder for inference in plain torch (the architecture of Geneformer's ``BertForMaskedLM``).

Pure tensor code, no AnnData. Loads HuggingFace ``BertForMaskedLM``/``BertModel`` state dicts, fuses query/key/value
into one matrix, uses :func:`torch.nn.functional.scaled_dot_product_attention`, and runs only the layers that are
asked for. The masked-LM head (``cls.predictions.*``) is an explicit optional part (:class:`BertMLMHead`, built with
``BertEncoder(..., mlm_head=True)``); embeddings never compute it.
"""

from __future__ import annotations

import re
from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F

from ._bert_config import BertConfig
from ._inference_ops import add_fresh

__all__ = [
    "BertConfig",
    "BertEncoder",
    "BertMLMHead",
    "bert_state_dict_keys",
    "convert_hf_mlm_head",
    "convert_hf_state_dict",
]

# one function per name of ACTIVATIONS, the hidden_act values BertConfig accepts (tests/models/test_bert_config.py)
_ACT = {"relu": F.relu, "gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu}
# in-place versions where torch has one (the same values), for the per-sequence inference path
_ACT_INPLACE = {"relu": torch.relu_, "silu": lambda x: F.silu(x, inplace=True)}


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.qkv = nn.Linear(h, 3 * h)
        self.attn_out = nn.Linear(h, h)
        self.ln1 = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.inter = nn.Linear(h, cfg.intermediate_size)
        self.out = nn.Linear(cfg.intermediate_size, h)
        self.ln2 = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.act = _ACT[cfg.hidden_act]
        self.act_ = _ACT_INPLACE.get(cfg.hidden_act, self.act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, h = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, h // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.ln1(x + self.attn_out(a.transpose(1, 2).reshape(b, n, h)))
        return self.ln2(x + self.out(self.act(self.inter(x))))

    def attention_probs(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The softmax attention weights of this layer on input ``x``: ``(batch, heads, query, key)``."""
        b, n, h = x.shape
        q, k, _ = self.qkv(x).view(b, n, 3, self.n_heads, h // self.n_heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (h // self.n_heads) ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1)

    def forward_packed(self, x: torch.Tensor, bounds: list[int], rows: torch.Tensor | None = None) -> torch.Tensor:
        """The layer on packed sequences, with no padding (so attention needs no mask); inference only.

        ``x`` is ``(total_tokens, hidden)``; sequence ``i`` is rows ``bounds[i]:bounds[i + 1]``.

        With ``rows`` (one row index per sequence, e.g. its first token), only those rows' outputs are computed
        (queries, attention output and feed-forward of the other tokens would be discarded): ``(n_seq, hidden)``.
        """
        t, h = x.shape
        d = h // self.n_heads
        if rows is None:
            qkv = self.qkv(x).view(t, 3, self.n_heads, d)
            q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
            residual = x
        else:
            w, bias = self.qkv.weight, self.qkv.bias
            kv = F.linear(x, w[h:], bias[h:]).view(t, 2, self.n_heads, d)
            k, v = kv[:, 0], kv[:, 1]
            residual = x[rows]
            q = F.linear(residual, w[:h], bias[:h]).view(-1, self.n_heads, d)
        single = len(bounds) == 2
        a = q if single else torch.empty_like(q)
        for i in range(len(bounds) - 1):
            lo, hi = bounds[i], bounds[i + 1]
            qs = q[lo:hi] if rows is None else q[i : i + 1]
            # (1, heads, tokens, head_dim) views of the packed rows; SDPA's CPU and CUDA kernels take strided inputs
            out = F.scaled_dot_product_attention(
                qs.transpose(0, 1)[None], k[lo:hi].transpose(0, 1)[None], v[lo:hi].transpose(0, 1)[None]
            )
            if single:  # the kernel's (tokens, heads, head_dim) output as it is, no copy
                a = out[0].transpose(0, 1)
            else:
                (a[lo:hi] if rows is None else a[i : i + 1]).copy_(out[0].transpose(0, 1))
        # inference only: the residual adds and the activation run in place on fresh outputs (the same values)
        x = self.ln1(add_fresh(self.attn_out(a.reshape(-1, h)), residual))
        return self.ln2(add_fresh(self.out(self.act_(self.inter(x))), x))


class BertMLMHead(nn.Module):
    """HuggingFace ``BertOnlyMLMHead``: dense, activation, LayerNorm, then the decoder to vocabulary logits.

    The decoder weight is the word-embedding matrix unless the checkpoint stores its own
    (``cls.predictions.decoder.weight``); the bias is ``cls.predictions.bias``.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.dense = nn.Linear(h, h)
        self.act = _ACT[cfg.hidden_act]
        self.ln = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.decoder_weight = nn.Parameter(torch.empty(cfg.vocab_size, h))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits ``(..., vocab_size)`` of last-layer hidden states ``(..., hidden)``."""
        return F.linear(self.ln(self.act(self.dense(hidden))), self.decoder_weight, self.bias)

    def log_odds(self, hidden: torch.Tensor, tokens: torch.Tensor, *, chunk: int = 4096) -> torch.Tensor:
        """``log p / (1 - p)`` of ``tokens`` ``(m,)`` under the logits of ``hidden`` ``(m, hidden)`` (softmax).

        Computed ``chunk`` rows at a time, so the ``m x vocab_size`` logits are never held at once.
        """
        out = []
        for start in range(0, hidden.shape[0], chunk):
            z = self(hidden[start : start + chunk]).float()
            logp = z.gather(1, tokens[start : start + chunk, None]).squeeze(1) - torch.logsumexp(z, 1)
            # log(1 - p) = log(-expm1(log p)); clamped so that p == 1 in float32 gives a large finite value
            out.append(logp - torch.log((-torch.expm1(logp)).clamp(min=torch.finfo(torch.float32).tiny)))
        return torch.cat(out) if out else hidden.new_zeros(0)


class BertEncoder(nn.Module):
    """BERT embeddings + the first ``n_layers`` encoder layers (post-LayerNorm, as in HuggingFace BERT)."""

    def __init__(self, cfg: BertConfig, n_layers: int | None = None, *, mlm_head: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        n_layers = cfg.num_hidden_layers if n_layers is None else n_layers
        h = cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, h)
        self.position = nn.Embedding(cfg.max_position_embeddings, h)
        self.token_type = nn.Embedding(cfg.type_vocab_size, h)
        self.ln = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(n_layers))
        if mlm_head and n_layers != cfg.num_hidden_layers:
            msg = f"The MLM head reads the last layer: build the encoder with all {cfg.num_hidden_layers} layers."
            raise ValueError(msg)
        #: the masked-LM head (``None`` unless built with ``mlm_head=True``)
        self.mlm: BertMLMHead | None = BertMLMHead(cfg) if mlm_head else None

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor | None = None,
        return_layers: tuple[int, ...] = (),
        *,
        return_attention: int | None = None,
    ) -> torch.Tensor | dict[int | str, torch.Tensor]:
        """Hidden states after the last kept layer, ``(batch, seq, hidden)``.

        ``lengths`` gives the number of real tokens per row (the rest is padding and is masked out of attention);
        ``None`` means no padding. With ``return_layers``, returns ``{i: hidden states after i layers}`` instead
        (``0`` is the embedding output, as ``hidden_states[i]`` in HuggingFace). ``return_attention=i`` (1-based
        layer) adds ``"attention"``: that layer's attention weights ``(batch, heads, query, key)``, as HuggingFace's
        ``attentions[i - 1]``.
        """
        n = input_ids.shape[1]
        x = self.word(input_ids) + self.position.weight[:n] + self.token_type.weight[0]
        x = self.ln(x)
        mask = None
        if lengths is not None and bool((lengths < n).any()):
            keep = torch.arange(n, device=input_ids.device)[None, :] < lengths[:, None]
            mask = keep[:, None, None, :]
        kept: dict[int | str, torch.Tensor] = {0: x} if 0 in return_layers else {}
        for i, layer in enumerate(self.layers, start=1):
            if return_attention == i:
                kept["attention"] = layer.attention_probs(x, mask)
            x = layer(x, mask)
            if i in return_layers:
                kept[i] = x
        return kept if (return_layers or return_attention is not None) else x

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        bounds: list[int],
        return_layers: tuple[int, ...] = (),
        first_rows_only: bool = False,
        *,
        per_sequence: bool | None = None,
    ) -> torch.Tensor | dict[int, torch.Tensor]:
        """Like :meth:`forward` on packed variable-length sequences, with no padding work at all.

        ``input_ids`` is 1-d, the tokens of all sequences one after another; sequence ``i`` is
        ``input_ids[bounds[i]:bounds[i + 1]]`` (``bounds`` a list of Python ints starting at 0, so that no device
        value is read back). Returns ``(total_tokens, hidden)`` states (or ``{i: states}`` with ``return_layers``).
        ``first_rows_only`` computes only each sequence's first token (e.g. ``<cls>``) in the last layer, giving
        ``(n_seq, hidden)`` for it: the exact same values, without the discarded rows' work.

        ``per_sequence`` (default: on CPU) runs each sequence through all layers on its own (each layer's
        :meth:`_Layer.forward_packed` on that sequence alone), one sequence per CPU thread
        (:func:`~scfmkit.models._cpu_threads.map_sequences`): a sequence's intermediates (at most
        ``tokens x 3 hidden`` floats) stay in the CPU caches instead of being allocated afresh for the whole batch,
        and the threads do not meet at the end of every small op. ``False`` runs layer by layer, each linear layer
        over the whole batch at once (the GPU path: fewer, larger kernels). Both give the same values.
        """
        lengths = torch.tensor([b - a for a, b in pairwise(bounds)])
        starts = torch.tensor(bounds[:-1])
        positions = torch.arange(bounds[-1]) - torch.repeat_interleave(starts, lengths)
        device = input_ids.device
        x = self.word(input_ids) + self.position(positions.to(device)) + self.token_type.weight[0]
        x = self.ln(x)
        kept = {0: x} if 0 in return_layers else {}
        last = len(self.layers)
        if per_sequence is None:
            per_sequence = device.type == "cpu"
        if per_sequence and last and len(bounds) > 1:
            return self._forward_per_sequence(x, bounds, kept, return_layers, first_rows_only)
        for i, layer in enumerate(self.layers, start=1):
            rows = starts.to(device) if first_rows_only and i == last else None
            x = layer.forward_packed(x, bounds, rows)
            if i in return_layers:
                kept[i] = x
        return kept if return_layers else x

    def _forward_per_sequence(
        self,
        x: torch.Tensor,
        bounds: list[int],
        kept: dict[int, torch.Tensor],
        return_layers: tuple[int, ...],
        first_rows_only: bool,
    ) -> torch.Tensor | dict[int, torch.Tensor]:
        from ._cpu_threads import map_sequences

        last = len(self.layers)
        wanted = {i for i in return_layers if i > 0} if return_layers else {last}
        row0 = torch.zeros(1, dtype=torch.long, device=x.device)

        def one(seg: tuple[int, int]) -> dict[int, torch.Tensor]:
            lo, hi = seg
            h, states = x[lo:hi], {}
            for i, layer in enumerate(self.layers, start=1):
                h = layer.forward_packed(h, [0, hi - lo], row0 if first_rows_only and i == last else None)
                if i in wanted:
                    states[i] = h
            return states

        # one sequence per CPU thread (the callers sort by length, longest first)
        parts = map_sequences(one, list(pairwise(bounds)))
        kept |= {i: torch.cat([p[i] for p in parts]) for i in wanted}
        return kept if return_layers else kept[last]


_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_LAYER_MAP = {
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "ln1",
    "intermediate.dense": "inter",
    "output.dense": "out",
    "output.LayerNorm": "ln2",
}


def bert_state_dict_keys(cfg: BertConfig, *, mlm_head: bool = True) -> list[str]:
    """The parameter names of a HuggingFace ``BertForMaskedLM`` with this config (as saved to safetensors)."""
    keys = [
        f"bert.embeddings.{n}.weight" for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ] + ["bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias"]
    for i in range(cfg.num_hidden_layers):
        p = f"bert.encoder.layer.{i}."
        for sub in ("attention.self.query", "attention.self.key", "attention.self.value", *_LAYER_MAP):
            keys += [p + sub + ".weight", p + sub + ".bias"]
    if mlm_head:
        keys += [
            "cls.predictions.bias",
            "cls.predictions.transform.dense.weight",
            "cls.predictions.transform.dense.bias",
            "cls.predictions.transform.LayerNorm.weight",
            "cls.predictions.transform.LayerNorm.bias",
        ]
    return keys


def convert_hf_state_dict(sd: dict[str, torch.Tensor], cfg: BertConfig, n_layers: int) -> dict[str, torch.Tensor]:
    """Map a HuggingFace BERT state dict onto :class:`BertEncoder` (first ``n_layers`` layers).

    Accepts ``bert.``-prefixed (``BertForMaskedLM``) and bare (``BertModel``) keys and old ``gamma``/``beta`` LayerNorm
    names. Raises ``ValueError`` listing the missing core weights; head and pooler weights are ignored.
    """
    clean: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key[5:] if key.startswith("bert.") else key
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        clean[k] = value
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def take(src: str) -> torch.Tensor:
        if src not in clean:
            missing.append(src)
            return torch.empty(0)
        return clean[src]

    emb = {"word": "word_embeddings", "position": "position_embeddings", "token_type": "token_type_embeddings"}
    for ours, theirs in emb.items():
        out[f"{ours}.weight"] = take(f"embeddings.{theirs}.weight")
    out["ln.weight"] = take("embeddings.LayerNorm.weight")
    out["ln.bias"] = take("embeddings.LayerNorm.bias")
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            qkv = [take(f"{p}attention.self.{n}.{part}") for n in ("query", "key", "value")]
            out[f"layers.{i}.qkv.{part}"] = torch.cat(qkv) if all(t.numel() for t in qkv) else torch.empty(0)
            for theirs, ours in _LAYER_MAP.items():
                out[f"layers.{i}.{ours}.{part}"] = take(f"{p}{theirs}.{part}")
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        msg = f"The checkpoint lacks {len(missing)} core BERT weights ({shown}); not a usable Geneformer checkpoint."
        raise ValueError(msg)
    n_ckpt_layers = 1 + max((int(m.group(1)) for k in clean if (m := _LAYER_RE.match(k))), default=-1)
    if n_ckpt_layers != cfg.num_hidden_layers:
        msg = f"config.json says {cfg.num_hidden_layers} layers but the weights hold {n_ckpt_layers}."
        raise ValueError(msg)
    return out


def convert_hf_mlm_head(sd: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """Map the ``cls.predictions.*`` weights of a ``BertForMaskedLM`` state dict onto :class:`BertMLMHead`.

    The decoder weight is tied to the word embeddings (HuggingFace's default) unless the checkpoint stores
    ``cls.predictions.decoder.weight``. Raises ``ValueError`` naming what is missing (e.g. a ``BertModel`` checkpoint,
    which has no MLM head).
    """
    clean = {
        k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
        for k, v in sd.items()
    }
    p = "cls.predictions."
    names = {
        "dense.weight": p + "transform.dense.weight",
        "dense.bias": p + "transform.dense.bias",
        "ln.weight": p + "transform.LayerNorm.weight",
        "ln.bias": p + "transform.LayerNorm.bias",
    }
    out: dict[str, torch.Tensor] = {}
    missing = [src for src in names.values() if src not in clean]
    for ours, theirs in names.items():
        if theirs in clean:
            out[ours] = clean[theirs]
    bias = clean.get(p + "bias", clean.get(p + "decoder.bias"))
    if bias is None:
        missing.append(p + "bias")
    else:
        out["bias"] = bias
    weight = clean.get(p + "decoder.weight")
    if weight is None:
        weight = clean.get("bert.embeddings.word_embeddings.weight", clean.get("embeddings.word_embeddings.weight"))
    if weight is None:
        missing.append("bert.embeddings.word_embeddings.weight")
    else:
        out["decoder_weight"] = weight
    if missing:
        msg = (
            f"The checkpoint has no masked-LM head ({', '.join(missing[:4])} missing): it is not a BertForMaskedLM "
            "checkpoint. Scores that read the MLM head need the released BertForMaskedLM weights."
        )
        raise ValueError(msg)
    return out


def check_state_dict(sd: dict[str, torch.Tensor], cfg: BertConfig, *, source: object) -> None:
    """Refuse weights that disagree with ``config.json`` or hold non-finite values, naming the file and the fix.

    Checked at load time, so that a wrong config or corrupted bytes never reach a forward pass (where they would
    surface as a size mismatch or as NaN embeddings).
    """
    mapped = convert_hf_state_dict(sd, cfg, cfg.num_hidden_layers)
    with torch.device("meta"):
        expected = BertEncoder(cfg, cfg.num_hidden_layers).state_dict()
    wrong = [
        f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k].shape)} from config.json"
        for k, v in mapped.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        msg = (
            f"The weights in {source} do not match config.json ({len(wrong)} tensors, e.g. {wrong[0]}). Use the "
            "config.json released with these weights."
        )
        raise ValueError(msg)
    from ._io import check_finite

    check_finite(sd, source=source)


def random_hf_state_dict(cfg: BertConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights for a ``BertForMaskedLM`` with HuggingFace's initialisation scheme.

    Linear and embedding weights ~ N(0, initializer_range), biases 0, LayerNorm weight 1 and bias 0, the padding
    token's embedding row 0. Drawn with numpy's PCG64 in a fixed key order, so the same seed gives the same weights
    on every platform and torch version.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    h, inter = cfg.hidden_size, cfg.intermediate_size
    shapes = {
        "bert.embeddings.word_embeddings.weight": (cfg.vocab_size, h),
        "bert.embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
        "bert.embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, h),
        "cls.predictions.transform.dense.weight": (h, h),
    }
    sd: dict[str, torch.Tensor] = {}
    for key in bert_state_dict_keys(cfg):
        if key in shapes:
            shape = shapes[key]
        elif key.endswith("LayerNorm.weight"):
            sd[key] = torch.ones(h)
            continue
        elif key.endswith("bias"):
            n = (
                inter
                if key.endswith("intermediate.dense.bias")
                else (cfg.vocab_size if key == "cls.predictions.bias" else h)
            )
            sd[key] = torch.zeros(n)
            continue
        elif "intermediate.dense" in key:
            shape = (inter, h)
        elif key.endswith("output.dense.weight") and "attention" not in key:
            shape = (h, inter)
        else:
            shape = (h, h)
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(cfg.initializer_range)
        sd[key] = torch.from_numpy(w)
    sd["bert.embeddings.word_embeddings.weight"][cfg.pad_token_id] = 0.0
    return sd
