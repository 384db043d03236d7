"""The fine-tuning loop of every classifier network, and its prediction loop (torch, no AnnData).

A network (:class:`~scfmkit.models._bert_classifier.BertSequenceClassifier`,
:class:`~scfmkit.models._scgpt_classifier.ScGPTClassifier`,
:class:`~scfmkit.models._scbert_classifier.ScBERTClassifier`) exposes ``collate(tokens, idx) -> dict of tensors``,
``forward(**batch) -> logits``, ``layer_modules()`` and ``embedding_modules()``; this module trains it with
cross-entropy on integer labels. Every random number (batch order, dropout) comes from the seed: on CPU the same data
and seed give identical weights. The global torch RNG of the caller is left as it was.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._base import autocast
from ._tokens import TokenizedCells

__all__ = ["TrainConfig", "cosine_restarts_lrs", "fit_classifier", "predict_logits"]


@dataclass
class TrainConfig:
    """How a classifier is fine-tuned (defaults are filled in per family by :func:`scfmkit.tl.finetune`).

    Attributes
    ----------
    epochs
        Passes over the training cells.
    learning_rate
        Peak learning rate.
    batch_size
        Cells per optimiser step.
    optimizer
        ``"adamw"`` (HuggingFace ``Trainer``, Geneformer) or ``"adam"`` (scGPT tutorial).
    weight_decay, adam_eps
        AdamW's decoupled weight decay (Geneformer 0.001) and Adam's epsilon (scGPT 1e-4 under AMP).
    schedule
        ``"linear"`` (warm-up then linear decay to 0 per step, HuggingFace's), ``"step"`` (multiply by
        ``step_gamma`` after every epoch, scGPT's ``StepLR``), ``"cosine_restarts"`` (scBERT's
        ``CosineAnnealingWarmupRestarts``, stepped per epoch: from ``min_lr`` a linear warm-up of ``warmup_steps``
        epochs to the cycle's peak, a cosine down to ``min_lr`` over the rest of the cycle of ``cycle_steps``
        epochs; every new cycle is ``cycle_mult`` times as long (after the warm-up) and its peak ``step_gamma``
        times the last one's) or ``"constant"``.
    warmup_steps
        Linear warm-up steps of the ``"linear"`` schedule (capped at the number of steps), epochs of the
        ``"cosine_restarts"`` one (scBERT 5).
    step_gamma
        Per-epoch factor of the ``"step"`` schedule (scGPT ``schedule_ratio`` 0.9), per-cycle factor of the peak of
        ``"cosine_restarts"`` (scBERT 0.9).
    cycle_steps, cycle_mult, min_lr
        ``"cosine_restarts"``: epochs of the first cycle (scBERT 15), growth of the cycles (2) and the lowest
        learning rate (1e-6).
    grad_accumulation
        Batches whose gradients are summed before an optimiser step (scBERT 60). As scBERT's ``finetune.py``, the
        losses are not divided by it, gradients of batches left at an epoch's end carry over into the next epoch's
        first step, and clipping and the optimiser step come every ``grad_accumulation`` batches.
    max_grad_norm
        Gradient clipping norm (``None``: none; HuggingFace's default 1.0, scGPT 1.0).
    shuffle
        Batch order: ``"epoch"`` (a new seeded permutation every epoch, HuggingFace ``Trainer``) or ``"once"`` (one
        seeded permutation kept for every epoch: the scGPT tutorial shuffles once in ``train_test_split`` and its
        ``DataLoader`` has ``shuffle=False``).
    freeze_layers
        The first ``freeze_layers`` transformer layers get no updates.
    freeze_embeddings
        The input embeddings get no updates.
    trainable
        ``"all"`` (every parameter may be updated) or ``"reference"``: only the modules the network's
        ``reference_trainable()`` names (scBERT's ``finetune.py``: final LayerNorm, second-to-last layer, head).
    class_weights
        Per-class weights of the cross-entropy (``None``: all 1).
    patience
        Stop after this many epochs without a better validation score (``None``: run every epoch). The weights of the
        epoch with the best score are kept (HuggingFace ``load_best_model_at_end``; scGPT ``best_model``).
    best_metric
        The validation score that picks the best epoch: ``"val_loss"`` (lowest; Geneformer, scGPT) or
        ``"val_accuracy"`` (highest; scBERT's ``finetune.py``).
    seed
        Seed of batch order and dropout.
    device, precision
        Torch device; ``"float32"``, ``"bfloat16"`` (autocast) or ``"float16"`` (autocast and a gradient scaler).
    show_progress
        Progress bar with the running loss and validation score (``None``: :attr:`scfmkit.settings.progress`).
    """

    epochs: int = 10
    learning_rate: float = 5e-5
    batch_size: int = 12
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    schedule: str = "linear"
    warmup_steps: int = 0
    step_gamma: float = 0.9
    cycle_steps: int = 15
    cycle_mult: float = 2.0
    min_lr: float = 1e-6
    grad_accumulation: int = 1
    max_grad_norm: float | None = 1.0
    shuffle: str = "epoch"
    freeze_layers: int = 0
    freeze_embeddings: bool = False
    trainable: str = "all"
    class_weights: list[float] | None = None
    patience: int | None = None
    best_metric: str = "val_loss"
    seed: int = 0
    device: str = "cpu"
    precision: str = "float32"
    show_progress: bool | None = None

    def check(self) -> None:
        """Clear errors for values the loop cannot use."""
        for name in ("epochs", "batch_size", "grad_accumulation", "cycle_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                msg = f"`{name}` must be a positive integer, got {v!r}."
                raise ValueError(msg)
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            msg = f"`learning_rate` must be a positive number, got {self.learning_rate!r}."
            raise ValueError(msg)
        if self.optimizer not in {"adamw", "adam"}:
            msg = f"`optimizer` must be 'adamw' or 'adam', got {self.optimizer!r}."
            raise ValueError(msg)
        if self.schedule not in {"linear", "step", "cosine_restarts", "constant"}:
            msg = f"`schedule` must be 'linear', 'step', 'cosine_restarts' or 'constant', got {self.schedule!r}."
            raise ValueError(msg)
        if self.schedule == "cosine_restarts" and not 0 <= self.warmup_steps < self.cycle_steps:
            msg = f"`warmup_steps` ({self.warmup_steps}) must be below `cycle_steps` ({self.cycle_steps})."
            raise ValueError(msg)
        if self.trainable not in {"all", "reference"}:
            msg = f"`trainable` must be 'all' or 'reference', got {self.trainable!r}."
            raise ValueError(msg)
        if self.best_metric not in {"val_loss", "val_accuracy"}:
            msg = f"`best_metric` must be 'val_loss' or 'val_accuracy', got {self.best_metric!r}."
            raise ValueError(msg)
        if self.shuffle not in {"epoch", "once"}:
            msg = f"`shuffle` must be 'epoch' or 'once', got {self.shuffle!r}."
            raise ValueError(msg)
        if self.patience is not None and (not isinstance(self.patience, (int, np.integer)) or self.patience < 1):
            msg = f"`patience` must be a positive integer or None, got {self.patience!r}."
            raise ValueError(msg)
        fl = self.freeze_layers
        if isinstance(fl, bool) or not isinstance(fl, (int, np.integer)) or fl < 0:
            msg = f"`freeze_layers` must be a non-negative integer, got {fl!r}."
            raise ValueError(msg)

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain values (for ``uns`` and the saved JSON)."""
        return asdict(self)


def _freeze(net: nn.Module, cfg: TrainConfig) -> None:
    layers = net.layer_modules()
    if cfg.freeze_layers > len(layers):
        msg = f"`freeze_layers={cfg.freeze_layers}` but the model has {len(layers)} layers."
        raise ValueError(msg)
    fixed = {id(p) for p in net.parameters() if not p.requires_grad}  # fixed by the network (scBERT's gene2vec)
    for p in net.parameters():
        p.requires_grad_(id(p) not in fixed)
    if cfg.trainable == "reference":
        if not hasattr(net, "reference_trainable"):
            msg = f"`trainable='reference'` needs a network with a reference recipe; {net.family} has none."
            raise ValueError(msg)
        keep = {id(p) for m in net.reference_trainable() for p in m.parameters()}
        for p in net.parameters():
            p.requires_grad_(p.requires_grad and id(p) in keep)
    frozen = list(layers[: cfg.freeze_layers]) + (net.embedding_modules() if cfg.freeze_embeddings else [])
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)


def _optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    # HuggingFace's Trainer: no weight decay on biases and LayerNorm weights
    decay, no_decay = [], []
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if name == "bias" or isinstance(module, nn.LayerNorm) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, eps=cfg.adam_eps)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = steps_per_epoch * cfg.epochs
    if cfg.schedule == "linear":
        warm = min(cfg.warmup_steps, total)

        def factor(step: int) -> float:  # transformers.get_linear_schedule_with_warmup
            if step < warm:
                return step / max(1, warm)
            return max(0.0, (total - step) / max(1, total - warm))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor), "step"
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, 1, gamma=cfg.step_gamma), "epoch"
    if cfg.schedule == "cosine_restarts":
        lrs = cosine_restarts_lrs(cfg, cfg.epochs)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lrs[min(e, len(lrs) - 1)] / cfg.learning_rate), "epoch"
    return None, None


def cosine_restarts_lrs(cfg: TrainConfig, n_epochs: int) -> list[float]:
    """The learning rate of each epoch under scBERT's ``CosineAnnealingWarmupRestarts`` (its ``utils.py``).

    The reference sets the rate to ``min_lr`` at construction and steps once per epoch after training it, so epoch
    ``k`` (from 0) trains at step ``k`` of the cycles.
    """
    lo, peak0, warm = cfg.min_lr, cfg.learning_rate, cfg.warmup_steps
    out, step, cycle, length = [], 0, 0, cfg.cycle_steps
    for k in range(n_epochs):
        if k > 0:
            step += 1
            if step >= length:
                cycle += 1
                step -= length
                length = int((length - warm) * cfg.cycle_mult) + warm
        peak = peak0 * cfg.step_gamma**cycle
        if k == 0:
            out.append(lo)
        elif step < warm:
            out.append((peak - lo) * step / warm + lo)
        else:
            out.append(lo + (peak - lo) * (1 + math.cos(math.pi * (step - warm) / (length - warm))) / 2)
    return out


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _evaluate(net, tokens, y, idx, cfg, loss_fn) -> dict[str, float]:
    from sklearn.metrics import f1_score

    logits = predict_logits(net, tokens, idx, batch_size=cfg.batch_size, device=cfg.device, precision=cfg.precision)
    t_logits = torch.from_numpy(logits)
    t_y = torch.from_numpy(y[idx])
    w = loss_fn.weight.cpu() if loss_fn.weight is not None else None
    loss = float(nn.functional.cross_entropy(t_logits, t_y, weight=w))
    pred = logits.argmax(1)
    return {
        "val_loss": loss,
        "val_accuracy": float((pred == y[idx]).mean()),
        "val_macro_f1": float(f1_score(y[idx], pred, average="macro", labels=np.unique(y[idx]), zero_division=0)),
    }


def fit_classifier(
    net: nn.Module,
    tokens: TokenizedCells,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    cfg: TrainConfig,
) -> list[dict[str, float]]:
    """Fine-tune ``net`` in place on cells ``train_idx`` of ``tokens`` with integer labels ``y``.

    After every epoch the validation cells (if any) are scored (loss, accuracy, macro-F1); with validation cells the
    weights of the epoch with the best ``cfg.best_metric`` are restored at the end. Returns one dict per epoch
    (``epoch``, ``train_loss``, ``seconds``, ``cells_per_s``, validation scores, ``lr``).
    """
    from .._utils import logger, progress

    cfg.check()
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    _freeze(net, cfg)
    net.to(cfg.device)
    weight = None if cfg.class_weights is None else torch.tensor(cfg.class_weights, dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(cfg.device))
    opt = _optimizer(net, cfg)
    accumulate = int(cfg.grad_accumulation)
    n_batches = math.ceil(len(train_idx) / cfg.batch_size)
    if accumulate > 1 and n_batches * cfg.epochs < accumulate:
        logger.warning(
            "fine-tuning: %d batches in all but an optimiser step every %d batches (grad_accumulation): the weights "
            "are not updated. Lower `grad_accumulation` or `batch_size` in train_options for small data.",
            n_batches * cfg.epochs,
            accumulate,
        )
    steps_per_epoch = max(1, n_batches // accumulate)
    sched, sched_every = _scheduler(opt, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(torch.device(cfg.device).type) if cfg.precision in {"float16", "fp16"} else None
    history: list[dict[str, float]] = []
    best_score, best_state, best_epoch, bad = -math.inf, None, -1, 0
    sign = 1.0 if cfg.best_metric == "val_accuracy" else -1.0
    devices = [cfg.device] if torch.device(cfg.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        bar = progress(range(cfg.epochs), desc=f"fine-tuning {net.family}", unit="epoch", enabled=cfg.show_progress)
        for epoch in bar:
            net.train()
            t0 = time.perf_counter()
            if cfg.shuffle == "epoch" or epoch == 0:
                order = rng.permutation(np.asarray(train_idx))
            total, n_seen = 0.0, 0
            for b, idx in enumerate(_batches(order, cfg.batch_size), start=1):
                batch = _to(net.collate(tokens, idx), cfg.device)
                target = torch.from_numpy(y[idx]).to(cfg.device)
                with autocast(cfg.device, cfg.precision):
                    logits = net(**batch)
                loss = loss_fn(logits.float(), target)
                if accumulate == 1:
                    opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                if accumulate > 1 and b % accumulate:  # scBERT: gradients summed until every `accumulate`-th batch
                    total += float(loss.detach()) * len(idx)
                    n_seen += len(idx)
                    continue
                if scaler is not None:
                    scaler.unscale_(opt)
                if cfg.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], cfg.max_grad_norm)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                if accumulate > 1:
                    opt.zero_grad(set_to_none=True)
                if sched_every == "step":
                    sched.step()
                total += float(loss.detach()) * len(idx)
                n_seen += len(idx)
            seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch + 1,
                "train_loss": total / max(n_seen, 1),
                "seconds": seconds,
                "cells_per_s": n_seen / seconds if seconds > 0 else float("nan"),
                "lr": float(opt.param_groups[0]["lr"]),
            }
            if sched_every == "epoch":
                with warnings.catch_warnings():
                    # with no optimiser step yet (accumulation longer than the data, warned above) torch warns; the
                    # reference steps its schedule every epoch all the same
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                    sched.step()
            if val_idx is not None and len(val_idx):
                row |= _evaluate(net, tokens, y, val_idx, cfg, loss_fn)
                if sign * row[cfg.best_metric] > best_score:
                    best_score, best_epoch, bad = sign * row[cfg.best_metric], epoch + 1, 0
                    best_state = copy.deepcopy({k: v.detach().clone() for k, v in net.state_dict().items()})
                else:
                    bad += 1
            history.append(row)
            if hasattr(bar, "set_postfix"):
                shown = {"loss": f"{row['train_loss']:.3f}"}
                if "val_loss" in row:
                    shown |= {"val_loss": f"{row['val_loss']:.3f}", "val_acc": f"{row['val_accuracy']:.3f}"}
                bar.set_postfix(shown)
            if cfg.patience is not None and bad >= cfg.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
        for row in history:
            row["best"] = float(row["epoch"] == best_epoch)
    net.eval()
    return history


def predict_logits(
    net: nn.Module,
    tokens: TokenizedCells,
    idx: np.ndarray | None = None,
    *,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "float32",
) -> np.ndarray:
    """float32 logits ``(len(idx), n_classes)`` of cells ``idx`` (default all), batched by similar length."""
    idx = np.arange(len(tokens)) if idx is None else np.asarray(idx)
    out = np.empty((len(idx), net.n_classes), np.float32)
    order = np.argsort(-tokens.lengths[idx], kind="stable")
    was_training = net.training
    net.eval()
    net.to(device)
    with torch.inference_mode(), autocast(device, precision):
        for pos in _batches(order, batch_size):
            logits = net(**_to(net.collate(tokens, idx[pos]), device))
            out[pos] = logits.float().cpu().numpy()
    net.train(was_training)
    return out
