"""scBERT's Performer encoder (``PerformerLM`` of TencentAILabHealthcare/scBERT) in plain torch.

The module tree and parameter names are the reference's, so a released ``model_state_dict`` loads with
``load_state_dict(strict=True)``. Only what scBERT uses is implemented: global FAVOR+ softmax-kernel heads (no local
or causal attention, no reversible layers), pre-LayerNorm blocks, GELU feed-forward, the gene2vec positional
embedding (fixed) and the final LayerNorm.

Differences from the reference, none of which changes a number at batch size 1 (its ``predict.py``):

- the key stabiliser of the softmax kernel is the maximum over each cell's heads, positions and features; the
  reference takes it over the whole batch, so its outputs depend (slightly, through the kernel's ``eps``) on which
  cells share a batch. Here a cell's embedding never depends on its batch.
- projection matrices are never redrawn (the reference redraws them every 1000 training calls); they are the
  checkpoint's, as in the reference's evaluation mode.
- inference (eval mode, no autograd, no autocast) runs each block fused, 512 positions at a time
  (:func:`_fused_layer`, :func:`favor_attention`): LayerNorm, q/k/v, the random features, the attention output,
  ``to_out`` and the feed-forward of a block are made and consumed while in cache, with the context and the
  normaliser's key sum in one matmul, the key stabiliser kept as a running maximum (sums rescaled when it rises) and
  ``exp`` as ``exp2`` with ``log2 e`` folded into the projection. Training and autocast use the module-by-module
  path (``softmax_kernel``, ``linear_attention``: in place where autograd allows, without the ``repeat`` of the
  projection or the constant ``m^-1/2``, which cancels). Both give the reference's numbers up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "ClassificationHead",
    "PerformerConfig",
    "ScBertLM",
    "favor_attention",
    "gaussian_orthogonal_random_matrix",
    "linear_attention",
    "softmax_kernel",
]


@dataclass(frozen=True)
class PerformerConfig:
    """Sizes of an scBERT ``PerformerLM`` (the released model: 7 tokens, 16,907 positions, 200 dims, 6 x 10 heads).

    Attributes
    ----------
    num_tokens
        Expression tokens: ``bin_num + 2`` (bins ``0..bin_num`` and the mask token ``bin_num + 1``).
    max_seq_len
        Genes plus the trailing token (16,907).
    dim, depth, heads, dim_head
        Model width (200, tied to gene2vec), layers, attention heads and their width (reference default 64).
    nb_features
        Random features of FAVOR+ (default ``int(dim_head * log(dim_head))`` = 266).
    ff_mult
        Feed-forward expansion (4).
    qkv_bias
        Whether the q/k/v projections have biases (``PerformerLM``'s default is ``False``).
    """

    num_tokens: int = 7
    max_seq_len: int = 16_907
    dim: int = 200
    depth: int = 6
    heads: int = 10
    dim_head: int = 64
    nb_features: int | None = None
    ff_mult: int = 4
    qkv_bias: bool = False

    @property
    def n_features(self) -> int:
        """The number of random features actually used."""
        return self.nb_features if self.nb_features is not None else int(self.dim_head * math.log(self.dim_head))

    @property
    def bin_num(self) -> int:
        """Highest expression bin (5 for the released model)."""
        return self.num_tokens - 2

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> PerformerConfig:
        """Read the sizes off a ``PerformerLM`` state dict (the reference stores no config)."""
        try:
            num_tokens, dim = state["token_emb.weight"].shape
            max_seq_len = state["pos_emb.emb.weight"].shape[0]
            depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("performer.net.layers."))
            proj = state["performer.net.layers.0.0.fn.fast_attention.projection_matrix"]
            inner = state["performer.net.layers.0.0.fn.to_q.weight"].shape[0]
            ff = state["performer.net.layers.0.1.fn.fn.w1.weight"].shape[0]
        except (KeyError, ValueError) as err:
            msg = (
                f"The state dict is not an scBERT PerformerLM's (missing or odd {err}); expected keys such as "
                "'token_emb.weight', 'pos_emb.emb.weight' and 'performer.net.layers.0.0.fn.to_q.weight'."
            )
            raise ValueError(msg) from err
        nb_features, dim_head = proj.shape
        return cls(
            num_tokens=int(num_tokens),
            max_seq_len=int(max_seq_len),
            dim=int(dim),
            depth=int(depth),
            heads=int(inner // dim_head),
            dim_head=int(dim_head),
            nb_features=int(nb_features),
            ff_mult=int(ff // dim),
            qkv_bias="performer.net.layers.0.0.fn.to_q.bias" in state,
        )


# ---------------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------------


def softmax_kernel(
    data: torch.Tensor, projection: torch.Tensor, *, is_query: bool, eps: float = 1e-4, scaled: bool = True
) -> torch.Tensor:
    """FAVOR+ positive random features of ``data`` (``b, h, n, d``) with ``projection`` (``m, d``).

    ``ratio * (exp(w x / d^1/4 - |x|^2 / (2 d^1/2) - stabiliser) + eps)`` with ``ratio = m^-1/2``; the stabiliser is
    the per-position maximum for queries and the per-cell maximum for keys (see the module docstring). With
    ``scaled=False`` the constant ``ratio`` is left out: linear attention does not depend on it (it cancels between
    numerator and normaliser), so the encoder skips that pass over the features.
    """
    d, m = data.shape[-1], projection.shape[0]
    normalizer = d**-0.25
    # (x / d^1/4) . w computed as x . (w / d^1/4): the same numbers up to rounding, with no scaled copy of the data
    dash = torch.matmul(data, (normalizer * projection.type_as(data)).t())
    shift = (data * data).sum(dim=-1, keepdim=True).mul_(normalizer**2 / 2.0)
    if is_query:
        shift += dash.amax(dim=-1, keepdim=True)
    else:
        shift += dash.amax(dim=(1, 2, 3), keepdim=True)
    if torch.is_grad_enabled() and (data.requires_grad or projection.requires_grad):  # training: autograd-safe
        out = torch.exp(dash - shift) + eps
        return out * m**-0.5 if scaled else out
    out = dash.sub_(shift).exp_().add_(eps)
    return out.mul_(m**-0.5) if scaled else out


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal linear attention: ``D^-1 q (k^T v)`` with ``D = q . sum_n k``."""
    k_sum = k.sum(dim=-2)
    d_inv = 1.0 / torch.matmul(q, k_sum.type_as(q).unsqueeze(-1))
    context = torch.matmul(k.transpose(-2, -1), v)
    out = torch.matmul(q, context)
    return out * d_inv if torch.is_grad_enabled() and out.requires_grad else out.mul_(d_inv)


def gaussian_orthogonal_random_matrix(
    nb_rows: int, nb_columns: int, *, scaling: int = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The reference's projection matrix: stacked orthogonal blocks (QR of Gaussian matrices), rows rescaled.

    ``scaling=0`` gives rows the norms of Gaussian vectors (the reference default), ``1`` the norm ``sqrt(d)``.
    """

    def block() -> torch.Tensor:
        q, _ = torch.linalg.qr(torch.randn((nb_columns, nb_columns), generator=generator), mode="reduced")
        return q.t()

    blocks = [block() for _ in range(nb_rows // nb_columns)]
    rest = nb_rows - (nb_rows // nb_columns) * nb_columns
    if rest > 0:
        blocks.append(block()[:rest])
    final = torch.cat(blocks)
    if scaling == 0:
        multiplier = torch.randn((nb_rows, nb_columns), generator=generator).norm(dim=1)
    elif scaling == 1:
        multiplier = math.sqrt(float(nb_columns)) * torch.ones((nb_rows,))
    else:
        msg = f"`scaling` must be 0 or 1, got {scaling}."
        raise ValueError(msg)
    return torch.diag(multiplier) @ final


# ---------------------------------------------------------------------------------------------------------------
# modules (names as the reference's, for its state dict)
# ---------------------------------------------------------------------------------------------------------------


_CHUNK = 512  # positions per block of the fused attention (10 heads x 512 x 266 features: ~5 MiB, cache-sized)


class _FavorCell:
    """One cell's FAVOR+ attention, fed block by block (see :func:`favor_attention` for what it computes)."""

    def __init__(self, projection: torch.Tensor, heads: int, chunk: int, dtype: torch.dtype, device) -> None:
        m, d = projection.shape
        log2e = math.log2(math.e)
        self.d, self.eps = d, 1e-4
        self.proj_t = (projection.to(dtype) * (d**-0.25 * log2e)).t().contiguous()  # (d, m), exp -> exp2
        self.diag_scale = d**-0.5 / 2.0 * log2e
        self.feats = torch.empty(heads, chunk, m, dtype=dtype, device=device)
        self.v_one = torch.empty(heads, chunk, d + 1, dtype=dtype, device=device)
        self.v_one[..., d] = 1.0
        self.ctx = torch.empty(heads, m, d + 1, dtype=dtype, device=device)
        self.v_sum = torch.empty(heads, 1, d + 1, dtype=dtype, device=device)

    def start(self) -> None:
        self.ctx.zero_()
        self.v_sum.zero_()
        self.run_max = -math.inf

    def add_keys(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add a block of keys and values (``h, c, d``, any strides) to the context."""
        c, d = k.shape[1], self.d
        f = torch.matmul(k, self.proj_t, out=self.feats[:, :c])
        block_max = float(f.max())
        if block_max > self.run_max:
            if self.run_max > -math.inf:
                self.ctx.mul_(2.0 ** (self.run_max - block_max))
            self.run_max = block_max
        shift = (k * k).sum(-1, keepdim=True).mul_(self.diag_scale).add_(self.run_max)
        torch.exp2(f.sub_(shift), out=f)
        v_one = self.v_one[:, :c]
        v_one[..., :d] = v
        self.ctx.baddbmm_(f.transpose(1, 2), v_one)
        self.v_sum += v_one.sum(1, keepdim=True)

    def finish_keys(self) -> None:
        self.ctx.add_(self.v_sum, alpha=self.eps)  # the + eps of every key feature
        self.q_eps = self.ctx.sum(1, keepdim=True).mul_(self.eps)  # ... and of every query feature

    def attend(self, q: torch.Tensor, out: torch.Tensor) -> None:
        """Attention of a block of queries (``h, c, d``) into ``out`` (``h, c, d``, any strides)."""
        c, d = q.shape[1], self.d
        f = torch.matmul(q, self.proj_t, out=self.feats[:, :c])
        shift = (q * q).sum(-1, keepdim=True).mul_(self.diag_scale).add_(f.amax(-1, keepdim=True))
        torch.exp2(f.sub_(shift), out=f)
        num = torch.baddbmm(self.q_eps, f, self.ctx)  # (h, c, d + 1): numerator and normaliser
        torch.div(num[..., :d], num[..., d:], out=out)


def favor_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor, *, chunk: int = _CHUNK
) -> torch.Tensor:
    """FAVOR+ attention (``softmax_kernel`` features, then ``linear_attention``) fused blockwise, for inference.

    ``q, k, v`` are ``(b, h, n, d)`` (any strides), ``projection`` is ``(m, d)``; returns ``(b, n, h, d)``
    (the layout ``to_out`` reads, no copy). The numbers are the reference's up to float rounding; what changes is
    that no random-feature tensor of the full length is ever stored: positions go in blocks of ``chunk``, and each
    block's features are made and consumed while in cache.

    - Keys: block by block, ``D = k W^T / d^1/4`` (one matmul), ``exp(D - |k|^2 / (2 d^1/2) - M)`` and
      ``ctx += features^T [v, 1]`` (one matmul: the context and the normaliser's key sum together). ``M`` is the
      running maximum of ``D`` over the cell's heads, positions and features; when a block raises it the sums so far
      are rescaled by ``exp(M_old - M_new)``, so at the end they are the sums with the reference's stabiliser (the
      global maximum) exactly in real arithmetic. The ``+ eps`` of every key feature is added at the end as
      ``eps * sum_n [v, 1]``.
    - Queries: block by block, the features with the per-position maximum, then one matmul with ``[ctx | k_sum]``
      gives numerator and normaliser; the ``+ eps`` of every query feature is added as ``eps * sum_m [ctx | k_sum]``.
    - ``exp(x)`` is computed as ``exp2(x log2 e)`` with ``log2 e`` folded into the projection and the diagonal term.
    """
    b, h, n, d = q.shape
    chunk = min(chunk, n)
    out = torch.empty(b, n, h, d, dtype=q.dtype, device=q.device)
    cell = _FavorCell(projection, h, chunk, q.dtype, q.device)
    for i in range(b):
        cell.start()
        for s in range(0, n, chunk):
            cell.add_keys(k[i, :, s : s + chunk], v[i, :, s : s + chunk])
        cell.finish_keys()
        for s in range(0, n, chunk):
            cell.attend(q[i, :, s : s + chunk], out[i, s : s + chunk].transpose(0, 1))
    return out


def _fused_layer(x: torch.Tensor, attn: PreLayerNorm, ff: PreLayerNorm, chunk: int = _CHUNK) -> None:
    """One Performer block in place on ``x`` (``b, n, dim``, contiguous), for inference, ``chunk`` positions at a time.

    ``x += to_out(attention(LN1(x)))``, then ``x += w2(gelu(w1(LN2(x))))``: the reference's block, with every
    intermediate (normalised rows, q/k/v, features, attention output, the 4x feed-forward hidden layer) made and
    consumed one block of positions at a time, so none of them is stored at full length except the queries (which
    wait for the keys' context). The feed-forward of a block runs right after its attention output, both being
    position-wise.
    """
    b, n, dim = x.shape
    sa, fw = attn.fn, ff.fn.fn
    h, inner = sa.heads, sa.to_q.weight.shape[0]
    d = inner // h
    chunk = min(chunk, n)
    wq_t = sa.to_q.weight.t()
    wkv_t = torch.cat([sa.to_k.weight, sa.to_v.weight]).t()
    bq = sa.to_q.bias
    bkv = None if sa.to_k.bias is None else torch.cat([sa.to_k.bias, sa.to_v.bias])
    n1, n2 = attn.norm, ff.norm
    cell = _FavorCell(sa.fast_attention.projection_matrix, h, chunk, x.dtype, x.device)
    queries = torch.empty(n, inner, dtype=x.dtype, device=x.device)
    kv = torch.empty(chunk, 2 * inner, dtype=x.dtype, device=x.device)
    heads_out = torch.empty(chunk, inner, dtype=x.dtype, device=x.device)
    gelu = fw.act.approximate
    for i in range(b):
        cell.start()
        for s in range(0, n, chunk):
            c = min(chunk, n - s)
            xn = nn.functional.layer_norm(x[i, s : s + c], (dim,), n1.weight, n1.bias, n1.eps)
            qb, kvb = queries[s : s + c], kv[:c]
            torch.mm(xn, wq_t, out=qb) if bq is None else torch.addmm(bq, xn, wq_t, out=qb)
            torch.mm(xn, wkv_t, out=kvb) if bkv is None else torch.addmm(bkv, xn, wkv_t, out=kvb)
            kvb = kvb.view(c, 2, h, d)
            cell.add_keys(kvb[:, 0].transpose(0, 1), kvb[:, 1].transpose(0, 1))
        cell.finish_keys()
        for s in range(0, n, chunk):
            c = min(chunk, n - s)
            ob = heads_out[:c]
            cell.attend(queries[s : s + c].view(c, h, d).transpose(0, 1), ob.view(c, h, d).transpose(0, 1))
            xb = x[i, s : s + c]
            xb += torch.addmm(sa.to_out.bias, ob, sa.to_out.weight.t())
            xn = nn.functional.layer_norm(xb, (dim,), n2.weight, n2.bias, n2.eps)
            hidden = nn.functional.gelu(torch.addmm(fw.w1.bias, xn, fw.w1.weight.t()), approximate=gelu)
            xb += torch.addmm(fw.w2.bias, hidden, fw.w2.weight.t())


class FastAttention(nn.Module):
    def __init__(self, dim_head: int, nb_features: int) -> None:
        super().__init__()
        self.register_buffer("projection_matrix", torch.zeros(nb_features, dim_head))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of ``(b, h, n, d)`` inputs, returned as ``(b, n, h, d)``."""
        if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
            return favor_attention(q, k, v, self.projection_matrix)
        q = softmax_kernel(q, self.projection_matrix, is_query=True, scaled=False)
        k = softmax_kernel(k, self.projection_matrix, is_query=False, scaled=False)
        return linear_attention(q, k, v).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, cfg: PerformerConfig) -> None:
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads = cfg.heads
        self.fast_attention = FastAttention(cfg.dim_head, cfg.n_features)
        self.to_q = nn.Linear(cfg.dim, inner, bias=cfg.qkv_bias)
        self.to_k = nn.Linear(cfg.dim, inner, bias=cfg.qkv_bias)
        self.to_v = nn.Linear(cfg.dim, inner, bias=cfg.qkv_bias)
        self.to_out = nn.Linear(inner, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # q, k and v in one product (x is read once); the parameters stay the reference's three projections
        weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
        bias = None if self.to_q.bias is None else torch.cat([self.to_q.bias, self.to_k.bias, self.to_v.bias])
        qkv = nn.functional.linear(x, weight, bias).view(b, n, 3, self.heads, -1)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        out = self.fast_attention(q, k, v)  # (b, n, h, d)
        return self.to_out(out.reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, dim * mult)
        self.act = nn.GELU()
        self.w2 = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act(self.w1(x)))


class Chunk(nn.Module):
    """The reference's feed-forward wrapper (one chunk: a pass-through that keeps the parameter names)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class PreLayerNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


def _can_fuse(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether the blockwise inference path applies: eval mode, no autograd, no autocast, x in the weights' dtype."""
    if module.training or x.dtype != next(module.parameters()).dtype:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
        return False
    return not torch.is_autocast_enabled(x.device.type)


class SequentialSequence(nn.Module):
    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor, *, return_layers: tuple[int, ...] = ()) -> tuple[torch.Tensor, list]:
        if _can_fuse(self, x):
            x = x.contiguous().clone()  # updated in place, block by block
            kept = [x.clone()] if 0 in return_layers else []
            for i, (attn, ff) in enumerate(self.layers, start=1):
                _fused_layer(x, attn, ff)
                if i in return_layers:
                    kept.append(x.clone())
            return x, kept
        kept = [x] if 0 in return_layers else []
        for i, (attn, ff) in enumerate(self.layers, start=1):
            x = x + attn(x)
            x = x + ff(x)
            if i in return_layers:
                kept.append(x)
        return x, kept


class Performer(nn.Module):
    def __init__(self, cfg: PerformerConfig) -> None:
        super().__init__()
        layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreLayerNorm(cfg.dim, SelfAttention(cfg)),
                    PreLayerNorm(cfg.dim, Chunk(FeedForward(cfg.dim, cfg.ff_mult))),
                ]
            )
            for _ in range(cfg.depth)
        )
        self.net = SequentialSequence(layers)
        self.register_buffer("calls_since_last_redraw", torch.tensor(0))

    def forward(self, x: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, list]:
        return self.net(x, **kwargs)


class Gene2VecPositionalEmbedding(nn.Module):
    """The fixed gene2vec table (genes plus a zero row for the trailing token), kept in its stored dtype.

    The reference builds it from float64 numpy, so the released table is float64 and is added in place to the
    float32 token embeddings; this module does the same.
    """

    def __init__(self, max_seq_len: int, dim: int, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim, dtype=dtype)
        self.emb.weight.requires_grad_(False)

    def forward(self, n: int) -> torch.Tensor:
        return self.emb.weight[:n]


class ScBertLM(nn.Module):
    """scBERT's ``PerformerLM`` (``g2v_position_emb=True``): token + gene2vec embedding, Performer, LayerNorm.

    ``forward(ids)`` returns the final LayerNorm's output (``return_encodings=True`` in the reference);
    ``logits(encodings)`` applies the pretraining head ``to_out``.
    """

    def __init__(self, cfg: PerformerConfig, *, pos_dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_emb = nn.Embedding(cfg.num_tokens, cfg.dim)
        self.pos_emb = Gene2VecPositionalEmbedding(cfg.max_seq_len, cfg.dim, dtype=pos_dtype)
        self.performer = Performer(cfg)
        self.norm = nn.LayerNorm(cfg.dim)
        self.to_out = nn.Linear(cfg.dim, cfg.num_tokens)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings plus the gene2vec rows of positions ``0..n-1`` (the encoder's input)."""
        n = ids.shape[1]
        if n > self.cfg.max_seq_len:
            msg = f"Sequence length {n} exceeds the model's {self.cfg.max_seq_len} positions."
            raise ValueError(msg)
        x = self.token_emb(ids)
        x += self.pos_emb(n)
        return x

    def forward(self, ids: torch.Tensor, *, return_layers: tuple[int, ...] = ()) -> torch.Tensor | tuple:
        """Final encodings ``(b, n, dim)``; with ``return_layers`` also the (un-normalised) residual streams.

        Layer ``0`` is the embedding, ``i`` the output of block ``i``.
        """
        x, kept = self.performer(self.embed(ids), return_layers=return_layers)
        x = self.norm(x)
        return (x, kept) if return_layers else x

    def logits(self, encodings: torch.Tensor) -> torch.Tensor:
        """The pretraining head: expression-token logits ``(b, n, num_tokens)``."""
        return self.to_out(encodings)


def random_state_dict(cfg: PerformerConfig, gene2vec: Any, seed: int) -> dict[str, torch.Tensor]:
    """A seeded random ``PerformerLM`` state dict with the reference's keys and initialisation.

    Linear layers, embeddings and LayerNorms get torch's default initialisation (as the reference's constructor),
    the projection matrices the reference's Gaussian orthogonal draw, and ``pos_emb`` the given gene2vec matrix
    (``n_genes x dim``) with the zero row appended for the trailing token, in float64 as the reference.
    """
    import numpy as np

    g2v = np.asarray(gene2vec, dtype=np.float64)
    if g2v.shape != (cfg.max_seq_len - 1, cfg.dim):
        msg = f"gene2vec must be {(cfg.max_seq_len - 1, cfg.dim)} (genes x dim), got {g2v.shape}."
        raise ValueError(msg)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        module = ScBertLM(cfg)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    for key in state:
        if key.endswith("projection_matrix"):
            state[key] = gaussian_orthogonal_random_matrix(cfg.n_features, cfg.dim_head, generator=gen)
    table = np.concatenate([g2v, np.zeros((1, g2v.shape[1]))], axis=0)
    state["pos_emb.emb.weight"] = torch.from_numpy(table)
    return state


class ClassificationHead(nn.Module):
    """The reference's fine-tuning head (``Identity`` in ``finetune.py``/``predict.py``) on the encoder output.

    A ``1 x dim`` convolution turns each position's encoding into one number (ReLU), then ``fc1`` (positions -> 512),
    ``fc2`` (512 -> ``h_dim``, 128 in the reference) and ``fc3`` (-> classes), with ReLU and dropout between.
    Input: the final encodings ``(b, n_genes + 1, dim)``; output: logits ``(b, n_classes)``.
    """

    def __init__(self, seq_len: int, n_classes: int, *, dim: int = 200, h_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, (1, dim))
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(seq_len, 512)
        self.act1 = nn.ReLU()
        self.dropout1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(512, h_dim)
        self.act2 = nn.ReLU()
        self.dropout2 = nn.Dropout(dropout)
        self.fc3 = nn.Linear(h_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x[:, None, :, :])).view(x.shape[0], -1)
        x = self.dropout1(self.act1(self.fc1(x)))
        x = self.dropout2(self.act2(self.fc2(x)))
        return self.fc3(x)
