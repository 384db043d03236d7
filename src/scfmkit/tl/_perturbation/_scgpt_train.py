"""Fine-tuning and prediction kernels of the scGPT perturbation generator (arrays and torch, no AnnData).

The loop is the reference tutorial's (``tutorials/Tutorial_Perturbation.ipynb``, ``train`` and ``pred_perturb`` with
``include_zero_gene="all"``): every measured gene is a token; its input value is the control cell's; the targets are
the perturbed cell's values; the loss is ``masked_mse_loss`` over the measured genes; gradients are clipped to norm
1.0; Adam and StepLR(step 1 epoch, gamma 0.9); when there are more than ``max_seq_len`` genes a random subset of gene
positions (one per batch, ``randperm(...)[:max_seq_len]``) is fed, as in the tutorial.

Same updates, less work per step than the tutorial's loop: only the vocabulary rows the fit uses are trained (the
other rows' gradients are zero at every step, so Adam leaves them exactly as they are; :class:`_CompactEmbedding`),
Adam runs fused (one kernel for all parameters), and the loss is summed on the device (one host sync per epoch).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scfmkit._utils import logger

__all__ = ["ConditionTokens", "TrainLog", "make_batch", "predict_cells", "train_generator"]


@dataclass(frozen=True)
class ConditionTokens:
    """How a condition enters the sequence: flagged measured-gene positions and appended (unmeasured) gene tokens."""

    flag_positions: tuple[int, ...]
    extra_tokens: tuple[int, ...]


@dataclass
class TrainLog:
    """Per-epoch record of a fit."""

    loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cells_per_second: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "loss": list(self.loss),
            "val_score": list(self.val_score),
            "seconds": list(self.seconds),
            "cells_per_second": list(self.cells_per_second),
            "best_epoch": int(self.best_epoch),
            "stopped_early": bool(self.stopped_early),
        }


def make_batch(
    inputs: np.ndarray,
    conds: Sequence[ConditionTokens],
    gene_tokens: np.ndarray,
    *,
    pad_id: int,
    pert_pad_id: int,
    pad_value: float = 0.0,
    positions: np.ndarray | None = None,
    targets: np.ndarray | None = None,
):
    """Padded tensors of one batch: ``(tokens, values, flags, lengths, loss_mask, target)``.

    Row ``i``: the measured genes at ``positions`` (all, in order, when ``None``) with the values ``inputs[i]``, flags
    1 at the condition's measured perturbed genes, then the condition's appended tokens (value 0, flag 1), then
    padding (``<pad>``, ``pad_value``, ``pert_pad_id``) up to the longest row. ``loss_mask`` is True at the measured
    genes only (appended genes have no target).
    """
    import torch

    b = inputs.shape[0]
    pos = np.arange(gene_tokens.size) if positions is None else np.asarray(positions)
    g = pos.size
    k = max((len(c.extra_tokens) for c in conds), default=0)
    n = g + k
    tokens = np.full((b, n), pad_id, dtype=np.int64)
    values = np.full((b, n), pad_value, dtype=np.float32)
    flags = np.full((b, n), pert_pad_id, dtype=np.int64)
    tokens[:, :g] = gene_tokens[pos]
    values[:, :g] = inputs[:, pos]
    flags[:, :g] = 0
    inv = np.full(gene_tokens.size, -1, dtype=np.int64)
    inv[pos] = np.arange(g)
    lengths = np.empty(b, dtype=np.int64)
    for i, c in enumerate(conds):
        fp = inv[list(c.flag_positions)] if c.flag_positions else np.zeros(0, np.int64)
        flags[i, fp[fp >= 0]] = 1
        e = len(c.extra_tokens)
        if e:
            tokens[i, g : g + e] = c.extra_tokens
            values[i, g : g + e] = 0.0
            flags[i, g : g + e] = 1
        lengths[i] = g + e
    mask = np.zeros((b, n), dtype=bool)
    mask[:, :g] = True
    out = [torch.from_numpy(tokens), torch.from_numpy(values), torch.from_numpy(flags)]
    lens = torch.from_numpy(lengths) if (lengths < n).any() else None
    tgt = None
    if targets is not None:
        t = np.zeros((b, n), dtype=np.float32)
        t[:, :g] = targets[:, pos]
        tgt = torch.from_numpy(t)
    return (*out, lens, torch.from_numpy(mask), tgt)


def _autocast(device: str, precision: str):
    from scfmkit.models._base import autocast

    return autocast(device, precision)


def predict_cells(
    module,
    control: np.ndarray,
    cond: ConditionTokens,
    gene_tokens: np.ndarray,
    *,
    pad_id: int,
    pert_pad_id: int,
    batch_size: int,
    device: str,
    precision: str = "float32",
) -> np.ndarray:
    """Predicted expression of every control cell under ``cond`` (the reference ``pred_perturb``, all genes)."""
    import torch

    module.eval()
    out = np.empty(control.shape, dtype=np.float32)
    g = gene_tokens.size
    with torch.inference_mode(), _autocast(device, precision):
        for s in range(0, control.shape[0], batch_size):
            x = control[s : s + batch_size]
            t, v, f, lens, _, _ = make_batch(
                x, [cond] * x.shape[0], gene_tokens, pad_id=pad_id, pert_pad_id=pert_pad_id
            )
            pred = module(t.to(device), v.to(device), f.to(device), None if lens is None else lens.to(device))
            out[s : s + batch_size] = pred[:, :g].float().cpu().numpy()
    return out


class _CompactEmbedding:
    """Train only the vocabulary rows a fit can use (its gene tokens, appended tokens and ``<pad>``).

    A row no training token uses gets an all-zero gradient at every step, so Adam (no weight decay) leaves it exactly
    unchanged and it adds zeros to the clipped gradient norm: training a table of the used rows is the reference's
    update of the whole vocabulary without its full-vocabulary gradient, zero-fill and optimiser work each step.
    :meth:`swap_in` puts the compact table in the module (tokens then go through :attr:`remap`), :meth:`swap_out`
    writes it back into the full table and restores it (for validation, saving and prediction).
    """

    def __init__(self, module, used: np.ndarray) -> None:
        import torch
        from torch import nn

        self.module = module
        self.full = module.encoder.embedding
        w = self.full.weight
        self.used = torch.as_tensor(np.unique(used), dtype=torch.long, device=w.device)
        remap = torch.zeros(w.shape[0], dtype=torch.long, device=w.device)
        remap[self.used] = torch.arange(self.used.numel(), device=w.device)
        self.remap = remap
        pad = self.full.padding_idx
        self.compact = nn.Embedding(
            self.used.numel(), w.shape[1], padding_idx=None if pad is None else int(remap[pad]), device=w.device
        )
        with torch.no_grad():
            self.compact.weight.copy_(w[self.used])

    def swap_in(self) -> None:
        self.module.encoder.embedding = self.compact

    def swap_out(self) -> None:
        import torch

        if self.module.encoder.embedding is self.full:
            return
        with torch.no_grad():
            self.full.weight[self.used] = self.compact.weight
        self.module.encoder.embedding = self.full


def train_generator(
    module,
    *,
    X: Any,
    target_rows: np.ndarray,
    input_rows: np.ndarray,
    pair_conds: Sequence[ConditionTokens],
    gene_tokens: np.ndarray,
    pad_id: int,
    pert_pad_id: int,
    epochs: int,
    lr: float,
    gamma: float,
    batch_size: int,
    max_seq_len: int,
    early_stop: int,
    clip: float,
    rng: np.random.Generator,
    device: str,
    precision: str,
    validate: Callable[[Any], float] | None,
    progress_bar: bool | None = None,
) -> TrainLog:
    """Fine-tune ``module`` in place; with ``validate`` the best epoch's weights are restored at the end.

    ``X`` (cells x measured genes, dense or CSR) holds the values; a training pair is ``(input_rows[i],
    target_rows[i], pair_conds[i])``. The pairs are shuffled each epoch with ``rng`` (the GEARS train loader shuffles).
    ``validate(module)`` returns a score (higher is better, Pearson delta) after each epoch; the best epoch is kept
    (the tutorial's ``val_score > best_val_corr`` with ``best_val_corr = 0``, so an epoch must score above 0) and
    training stops after ``early_stop`` epochs without improvement.
    """
    import torch

    from scfmkit._utils import progress
    from scfmkit.models._scgpt_generator import masked_mse_loss

    module.to(device)
    pad_id_used = [pad_id, *[t for c in pair_conds for t in c.extra_tokens]]
    compact = _CompactEmbedding(module, np.concatenate([np.asarray(gene_tokens, np.int64), pad_id_used]))
    compact.swap_in()
    # the reference's Adam (same update); fused: one kernel for all parameters instead of ~10 small ops per tensor
    opt = torch.optim.Adam(module.parameters(), lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=gamma)
    scaler = torch.amp.GradScaler(device=torch.device(device).type, enabled=precision == "float16")
    g = gene_tokens.size
    n_pairs = target_rows.size
    log = TrainLog()
    best_score, best_state, patience = 0.0, None, 0
    dense = not hasattr(X, "toarray")

    def rows(idx):
        sub = X[idx]
        return np.asarray(sub if dense else sub.toarray(), dtype=np.float32)

    bar = progress(range(1, epochs + 1), total=epochs, desc="scGPT fine-tuning", unit="epoch", enabled=progress_bar)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            module.train()
            order = rng.permutation(n_pairs)
            total, n_batches = torch.zeros((), dtype=torch.float64, device=device), 0
            for s in range(0, n_pairs, batch_size):
                idx = order[s : s + batch_size]
                positions = rng.permutation(g)[:max_seq_len] if g > max_seq_len else None
                t, v, f, lens, mask, tgt = make_batch(
                    rows(input_rows[idx]),
                    [pair_conds[i] for i in idx],
                    gene_tokens,
                    pad_id=pad_id,
                    pert_pad_id=pert_pad_id,
                    positions=positions,
                    targets=rows(target_rows[idx]),
                )
                with _autocast(device, precision):
                    t = compact.remap[t.to(device)]
                    pred = module(t, v.to(device), f.to(device), None if lens is None else lens.to(device))
                    loss = masked_mse_loss(pred.float(), tgt.to(device), mask.to(device))
                module.zero_grad()
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip, error_if_nonfinite=not scaler.is_enabled())
                scaler.step(opt)
                scaler.update()
                total += loss.detach()  # summed on the device: no host sync per step
                n_batches += 1
            log.loss.append(float(total.item()) / max(n_batches, 1))
            compact.swap_out()
            secs = time.perf_counter() - t0
            log.seconds.append(secs)
            log.cells_per_second.append(n_pairs / secs if secs > 0 else float("inf"))
            msg = f"epoch {epoch}: loss {log.loss[-1]:.4f}, {log.cells_per_second[-1]:.0f} cells/s"
            if validate is not None:
                score = float(validate(module))
                log.val_score.append(score)
                msg += f", validation Pearson delta {score:.4f}"
                if score > best_score:
                    best_score, patience, log.best_epoch = score, 0, epoch
                    best_state = copy.deepcopy({k: v.detach().clone() for k, v in module.state_dict().items()})
                else:
                    patience += 1
            else:
                log.best_epoch = epoch
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{log.loss[-1]:.4f}")
            logger.info("scGPT generator %s", msg)
            if validate is not None and patience >= early_stop:
                log.stopped_early = True
                logger.info("scGPT generator: early stop at epoch %d (best %d)", epoch, log.best_epoch)
                break
            compact.swap_in()
            sched.step()
    finally:  # the full embedding table back in the module, also after an error
        compact.swap_out()
    if validate is not None:
        if best_state is None:
            logger.warning(
                "scGPT generator: no epoch reached a validation Pearson delta above 0; keeping the last epoch."
            )
            log.best_epoch = len(log.loss)
        else:
            module.load_state_dict(best_state)
    module.eval()
    return log
