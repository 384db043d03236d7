"""``fm.tl.finetune`` and ``fm.tl.annotate``: fine-tune a foundation model as a cell classifier, then label cells.

The AnnData wrappers around the torch kernels of :mod:`scfmkit.models._classifier` (training loop),
:mod:`scfmkit.models._bert_classifier` (Geneformer's ``BertForSequenceClassification``),
:mod:`scfmkit.models._scgpt_classifier` (scGPT's ``ClsDecoder``), :mod:`scfmkit.models._scbert_classifier` (scBERT's
``Identity`` head) and :mod:`scfmkit.models._classifier_io` (folders).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import models
from .._random import as_seed
from .._utils import check_free_keys, get_modality, logger, sanitize_params

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["FineTunedClassifier", "annotate", "finetune", "finetune_proba", "load_classifier"]

#: Defaults of each family: Geneformer's ``Classifier`` (cell classifier, ``get_default_train_args``) and the scGPT
#: annotation tutorial (``Tutorial_Annotation``: lr 1e-4, batch 32, 10 epochs, StepLR 0.9 per epoch, Adam,
#: dropout 0.2, gradient clipping 1.0, max_seq_len 3001, cells shuffled once, cross-entropy only) and scBERT's
#: ``finetune.py`` (Adam lr 1e-4, batch 3 with
#: 60 batches of gradient accumulation, 100 epochs, ``CosineAnnealingWarmupRestarts(first_cycle_steps=15,
#: cycle_mult=2, min_lr=1e-6, warmup_steps=5, gamma=0.9)`` per epoch, clipping at 1e6, only the final LayerNorm,
#: ``layers[-2]`` and the head trained, the epoch with the best validation accuracy kept, stopping once 10 epochs in
#: a row have not improved it: ``trigger_times > PATIENCE``, i.e. patience 11; no class weights in its loss).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "geneformer": {
        "epochs": 10,
        "learning_rate": 5e-5,
        "batch_size": 12,
        "optimizer": "adamw",
        "weight_decay": 0.001,
        "schedule": "linear",
        "warmup_steps": 500,
        "max_grad_norm": 1.0,
    },
    "scgpt": {
        "epochs": 10,
        "learning_rate": 1e-4,
        "batch_size": 32,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "schedule": "step",
        "step_gamma": 0.9,
        "max_grad_norm": 1.0,
        "shuffle": "once",
    },
    "scbert": {
        "epochs": 100,
        "learning_rate": 1e-4,
        "batch_size": 3,
        "grad_accumulation": 60,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "schedule": "cosine_restarts",
        "cycle_steps": 15,
        "cycle_mult": 2.0,
        "min_lr": 1e-6,
        "warmup_steps": 5,
        "step_gamma": 0.9,
        "max_grad_norm": 1e6,
        "trainable": "reference",
        "best_metric": "val_accuracy",
        "patience": 11,
    },
}
_SCGPT_MAX_LENGTH = 3001  # the tutorial's max_seq_len


class FineTunedClassifier:
    """A foundation model fine-tuned as a cell classifier (returned by :func:`finetune`, used by :func:`annotate`).

    Attributes
    ----------
    net
        The torch network (encoder and classification head).
    base
        The foundation model whose tokeniser prepares the cells (its weights are not the fine-tuned ones).
    labels
        Class names in output order.
    label_key
        The ``obs`` column it was trained on.
    history
        One dict per epoch: ``train_loss``, ``seconds``, ``cells_per_s`` and, with validation cells, ``val_loss``,
        ``val_accuracy``, ``val_macro_f1`` and ``best``.
    params
        Training and tokenisation options (recorded by :func:`annotate`).
    """

    def __init__(
        self,
        net: Any,
        base: models.FoundationModel,
        labels: Sequence[str],
        *,
        label_key: str,
        tokenize_options: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        history: list[dict[str, float]] | None = None,
    ) -> None:
        self.net = net
        self.base = base
        self.labels = [str(x) for x in labels]
        self.label_key = label_key
        self.tokenize_options = dict(tokenize_options or {})
        self.params = dict(params or {})
        self.history = list(history or [])

    @property
    def family(self) -> str:
        """``"geneformer"``, ``"scgpt"`` or ``"scbert"``."""
        return self.net.family

    def __repr__(self) -> str:
        return (
            f"FineTunedClassifier({self.family}, {len(self.labels)} classes of {self.label_key!r}, "
            f"base={self.base.name!r}, epochs={len(self.history)})"
        )

    def tokens(self, adata: AnnData, **options: Any):
        """The base model's tokens of ``adata`` with the training's tokenisation options (overridable)."""
        return self.base.tokenize(adata, **{**self.tokenize_options, **options})

    def predict_logits(
        self,
        adata: AnnData,
        *,
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "auto",
        **options: Any,
    ) -> np.ndarray:
        """float32 logits ``(n_obs, n_classes)`` in input order."""
        from ..models._classifier import predict_logits

        tokens, _ = self.tokens(adata, **options)
        dev = self.base.resolve_device(device)
        return predict_logits(
            self.net,
            tokens,
            batch_size=self.base.resolve_batch_size(batch_size),
            device=dev,
            precision=_precision(precision, dev),
        )

    def predict_proba(self, adata: AnnData, **kwargs: Any) -> pd.DataFrame:
        """Class probabilities (softmax of the logits), cells x labels."""
        logits = self.predict_logits(adata, **kwargs).astype(np.float64)
        return pd.DataFrame(_softmax(logits), index=adata.obs_names.copy(), columns=self.labels)

    def save(self, path: str | Path) -> Path:
        """Write the classifier into the folder ``path`` (see :mod:`scfmkit.models._classifier_io` for the layout)."""
        from ..models._classifier_io import write_classifier

        meta = {
            "label_key": self.label_key,
            "tokenize_options": self.tokenize_options,
            "params": self.params,
            "history": self.history,
        }
        return write_classifier(path, self.net, self.base, self.labels, meta)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        dictionaries: str | Path | None = None,
        labels: Sequence[str] | None = None,
        label_key: str | None = None,
    ) -> FineTunedClassifier:
        """Load a folder of :meth:`save`, or a Geneformer ``Classifier`` (``BertForSequenceClassification``) one.

        ``dictionaries=``: the pretrained model's folder when the classifier folder has no dictionaries;
        ``labels=``: class names when ``config.json`` has only ``LABEL_<i>``.
        """
        from ..models._classifier_io import read_classifier

        net, base, names, meta = read_classifier(path, dictionaries=dictionaries, labels=labels)
        return cls(
            net,
            base,
            names,
            label_key=label_key or meta.get("label_key", "label"),
            tokenize_options=meta.get("tokenize_options"),
            params=meta.get("params"),
            history=meta.get("history"),
        )


def load_classifier(path: str | Path, **kwargs: Any) -> FineTunedClassifier:
    """:meth:`FineTunedClassifier.load`."""
    return FineTunedClassifier.load(path, **kwargs)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    return precision


def _label_values(adata: AnnData, label_key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(labelled mask, label strings, classes in order)``; NaN labels are not used."""
    if label_key not in adata.obs:
        msg = f"label_key {label_key!r} is not an obs column; available: {list(adata.obs.columns)}."
        raise KeyError(msg)
    col = adata.obs[label_key]
    labelled = col.notna().to_numpy()
    if not labelled.any():
        msg = f"obs[{label_key!r}] has no labels (all missing)."
        raise ValueError(msg)
    values = col.astype(object).where(col.notna(), None).to_numpy()
    text = np.array([str(v) if v is not None else "" for v in values], dtype=object)
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(text[labelled])
        classes = [str(c) for c in col.cat.categories if str(c) in present]
    else:
        classes = sorted(set(text[labelled]))
    return labelled, text, classes


def _validation_split(
    idx: np.ndarray,
    adata: AnnData,
    *,
    validation: float,
    validation_key: str | None,
    validation_groups: Sequence[Any] | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation cells (positions) among ``idx``: a random share of cells, or whole groups."""
    if validation_key is None and validation_groups is not None:
        msg = "`validation_groups` needs `validation_key=` (the obs column the groups are values of)."
        raise ValueError(msg)
    if validation_key is None:
        if not 0 <= validation < 1:
            msg = f"`validation` must be a share of cells in [0, 1), got {validation!r}."
            raise ValueError(msg)
        n_val = int(round(validation * len(idx)))
        if validation > 0 and n_val == 0:
            n_val = 1
        perm = rng.permutation(idx)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    if validation_key not in adata.obs:
        msg = f"validation_key {validation_key!r} is not an obs column; available: {list(adata.obs.columns)}."
        raise KeyError(msg)
    groups = adata.obs[validation_key].astype(str).to_numpy()[idx]
    uniq = sorted(set(groups))
    if len(uniq) < 2:
        msg = f"obs[{validation_key!r}] has one value among the labelled cells; a split by group needs at least two."
        raise ValueError(msg)
    if validation_groups is not None:
        chosen = {str(g) for g in validation_groups}
        unknown = chosen - set(uniq)
        if unknown:
            msg = f"validation_groups {sorted(unknown)} are not values of obs[{validation_key!r}] (have {uniq})."
            raise ValueError(msg)
        if chosen == set(uniq):
            msg = "validation_groups hold every group; leave at least one for training."
            raise ValueError(msg)
    else:
        order = list(rng.permutation(uniq))
        chosen, n = set(), 0
        target = max(validation, 1e-9) * len(idx)
        while order and n < target and len(chosen) < len(uniq) - 1:
            g = order.pop(0)
            chosen.add(g)
            n += int((groups == g).sum())
    is_val = np.isin(groups, sorted(chosen))
    return idx[~is_val], idx[is_val]


def _class_weights(class_weights: Any, y: np.ndarray, classes: list[str]) -> list[float] | None:
    if class_weights is None:
        return None
    n = len(classes)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            msg = f"`class_weights` must be None, 'balanced', a dict or a sequence of weights, got {class_weights!r}."
            raise ValueError(msg)
        counts = np.bincount(y, minlength=n).astype(np.float64)
        return (len(y) / (n * np.maximum(counts, 1))).tolist()  # scikit-learn's "balanced"
    if isinstance(class_weights, Mapping):
        missing = [c for c in classes if c not in {str(k) for k in class_weights}]
        if missing:
            msg = f"`class_weights` lacks a weight for {missing}."
            raise ValueError(msg)
        by_name = {str(k): float(v) for k, v in class_weights.items()}
        weights = [by_name[c] for c in classes]
    else:
        weights = [float(w) for w in class_weights]
        if len(weights) != n:
            msg = f"`class_weights` has {len(weights)} values for {n} classes ({classes})."
            raise ValueError(msg)
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        msg = f"`class_weights` must be finite and non-negative, got {weights}."
        raise ValueError(msg)
    return weights


def finetune(
    adata: AnnData | MuData,
    model: str | Path | models.FoundationModel,
    *,
    label_key: str,
    weights: str = "pretrained",
    init: str = "pretrained",
    epochs: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    freeze_layers: int = 0,
    freeze_embeddings: bool = False,
    validation: float = 0.1,
    validation_key: str | None = None,
    validation_groups: Sequence[Any] | None = None,
    class_weights: str | Mapping[str, float] | Sequence[float] | None = None,
    patience: int | None = None,
    min_cells_per_label: int = 2,
    train_options: Mapping[str, Any] | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    rng: int | np.random.Generator | None = 0,
    device: str | None = None,
    precision: str = "auto",
    show_progress: bool | None = None,
    mod: str | None = "rna",
    **tokenize_options: Any,
) -> FineTunedClassifier:
    """Fine-tune a foundation model as a cell classifier on the labels ``obs[label_key]``.

    Geneformer becomes HuggingFace's ``BertForSequenceClassification`` (the network Geneformer's ``Classifier``
    fine-tunes: pooler on the first token, dropout, linear layer) with the ``Classifier``'s defaults (10 epochs,
    AdamW lr 5e-5, weight decay 0.001, linear schedule with 500 warm-up steps, batch 12, weights of the epoch with the
    lowest validation loss). scGPT gets the reference ``ClsDecoder`` on its ``<cls>`` state with the annotation
    tutorial's defaults (10 epochs, Adam lr 1e-4, batch 32, learning rate x0.9 per epoch, dropout 0.2, cells shuffled
    once, cross-entropy only, best validation loss, up to 3001 tokens, ``<cls>`` input value 0, the head's hidden
    layers from the checkpoint's ``cls_decoder``). scBERT gets the reference ``Identity`` head (a ``1 x 200``
    convolution over every position's encoding, then three linear layers) with ``finetune.py``'s recipe (100 epochs,
    Adam lr 1e-4, batch 3 with 60 batches of gradient accumulation, cosine warm-up restarts per epoch, only LayerNorm,
    the second-to-last layer and the head trained, best validation accuracy, patience 11; see ``FAMILY_DEFAULTS``).
    Released model sizes are the defaults; everything is reproducible on CPU (same data and ``rng`` give identical
    weights).

    Parameters
    ----------
    adata
        Training cells with labels (not modified). A MuData is read in modality ``mod``.
    model
        A foundation model with the ``"classification"`` capability (registry name, folder or loaded model).
    label_key
        ``obs`` column with the cell labels. Cells with a missing (NaN) label are left out of training.
    weights
        ``"pretrained"`` or ``"random"`` weights when ``model`` is a name or folder.
    init
        ``"pretrained"`` fine-tunes the model's encoder; ``"random"`` trains the same network from a seeded random
        initialisation (the control that shows what pretraining adds).
    epochs, learning_rate, batch_size
        Override the family's defaults.
    freeze_layers
        The first ``freeze_layers`` transformer layers are not updated (Geneformer's ``freeze_layers``).
    freeze_embeddings
        The input embeddings are not updated (scGPT tutorial's ``freeze``).
    validation
        Share of the labelled cells held out to score every epoch and pick the best epoch (0: none; then the last
        epoch's weights are kept and ``patience`` has no effect).
    validation_key, validation_groups
        Split by an ``obs`` column (batch, donor) instead: the groups ``validation_groups``, or whole groups drawn at
        random until they hold ``validation`` of the cells (at least one group stays in training).
    class_weights
        ``"balanced"`` (``n / (n_classes * count)``), a dict label -> weight, or one weight per class (in
        :attr:`FineTunedClassifier.labels` order) for the cross-entropy.
    patience
        Early stopping: stop after ``patience`` epochs without a better validation score (``None``: the family's
        default, which is none for Geneformer and scGPT and 11 for scBERT).
    min_cells_per_label
        Labels with fewer training cells are refused with an error naming them (a class with one cell can be neither
        validated nor learned); remove those cells or lower this to 1 to keep them.
    train_options
        Other :class:`scfmkit.models._classifier.TrainConfig` fields (``schedule``, ``warmup_steps``,
        ``weight_decay``, ``optimizer``, ``adam_eps``, ``step_gamma``, ``max_grad_norm``, ``shuffle``).
    layer, gene_key
        Where the values and gene names are; see :func:`scfmkit.tl.embed`.
    rng
        Seed of the head's initialisation, the validation split, batch order and dropout (and scGPT's tokenisation).
    device
        Torch device (default :attr:`scfmkit.settings.device`).
    precision
        ``"auto"`` (bfloat16 autocast on CUDA, float32 elsewhere), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
    show_progress
        Progress bar over epochs with the loss and validation score (default :attr:`scfmkit.settings.progress`).
    mod
        Modality of a MuData.
    **tokenize_options
        Passed to the model's tokeniser, e.g. ``input="lognorm"`` for log-normalised data with Geneformer,
        ``max_length=`` for scGPT.

    Returns
    -------
    A :class:`FineTunedClassifier` (``.save(path)``, ``FineTunedClassifier.load(path)``, ``fm.tl.annotate``).
    """
    from ..models._classifier import TrainConfig, fit_classifier

    if init not in {"pretrained", "random"}:
        msg = f"`init` must be 'pretrained' or 'random', got {init!r}."
        raise ValueError(msg)
    if isinstance(min_cells_per_label, bool) or not isinstance(min_cells_per_label, int) or min_cells_per_label < 1:
        msg = f"`min_cells_per_label` must be a positive integer, got {min_cells_per_label!r}."
        raise ValueError(msg)
    seed = as_seed(rng)
    gen = np.random.default_rng(seed)
    data = get_modality(adata, mod)
    base = models.load(model, weights=weights, seed=seed)
    base.require("classification", what="fm.tl.finetune")
    if base.family not in FAMILY_DEFAULTS:
        msg = (
            f"fm.tl.finetune fine-tunes {sorted(FAMILY_DEFAULTS)} models; {base.name} ({base.family}) has a "
            "classification head but no fine-tuning recipe here yet."
        )
        raise TypeError(msg)
    labelled, text, classes = _label_values(data, label_key)
    if (~labelled).any():
        logger.info("finetune: %d cells without a %r label are not used.", int((~labelled).sum()), label_key)
    counts = pd.Series(text[labelled]).value_counts()
    rare = sorted(str(c) for c in counts.index[counts < min_cells_per_label])
    if rare:
        msg = (
            f"{len(rare)} label(s) of obs[{label_key!r}] have fewer than {min_cells_per_label} cells: "
            f"{rare[:10]} ({', '.join(f'{c}: {counts[c]}' for c in rare[:5])}). Remove those cells, e.g. "
            f"`adata = adata[adata.obs[{label_key!r}].map(adata.obs[{label_key!r}].value_counts()) >= "
            f"{min_cells_per_label}].copy()`, or pass `min_cells_per_label=1` to keep them."
        )
        raise ValueError(msg)
    if len(classes) < 2:
        msg = f"obs[{label_key!r}] has one label ({classes}); a classifier needs at least two."
        raise ValueError(msg)
    code = {c: i for i, c in enumerate(classes)}
    y = np.array([code.get(t, -1) for t in text], dtype=np.int64)
    idx = np.flatnonzero(labelled)
    train_idx, val_idx = _validation_split(
        idx, data, validation=validation, validation_key=validation_key, validation_groups=validation_groups, rng=gen
    )
    missing = sorted(set(classes) - set(text[train_idx]))
    if missing:
        logger.warning("finetune: labels %s have no training cells after the validation split.", missing)

    options = {**FAMILY_DEFAULTS.get(base.family, {}), **dict(train_options or {})}
    for name, value in (("epochs", epochs), ("learning_rate", learning_rate), ("batch_size", batch_size)):
        if value is not None:
            options[name] = value
    dev = base.resolve_device(device)
    prec = _precision(precision, dev)
    if base.family == "scgpt":
        options.setdefault("adam_eps", 1e-8 if prec in {"float32", "fp32"} else 1e-4)  # the tutorial, amp or not
    unknown = set(options) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        msg = f"Unknown train_options {sorted(unknown)}; see scfmkit.models._classifier.TrainConfig."
        raise TypeError(msg)
    family_patience = options.pop("patience", None)
    cfg = TrainConfig(
        **options,
        freeze_layers=freeze_layers,
        freeze_embeddings=freeze_embeddings,
        class_weights=_class_weights(class_weights, y[train_idx], classes),
        patience=patience if patience is not None else family_patience,
        seed=seed,
        device=dev,
        precision=prec,
        show_progress=show_progress,
    )
    cfg.check()

    tok_opts = {"layer": layer, "gene_key": gene_key, **tokenize_options}
    if base.family == "scgpt":
        tok_opts.setdefault("max_length", _SCGPT_MAX_LENGTH)
        tok_opts.setdefault("rng", seed)
    t0 = time.perf_counter()
    tokens, coverage = base.tokenize(data, **tok_opts)
    t_tok = time.perf_counter() - t0
    net = base.classification_head(len(classes), seed=seed, pretrained=init == "pretrained")
    t0 = time.perf_counter()
    history = fit_classifier(net, tokens, y, train_idx, val_idx if len(val_idx) else None, cfg)
    t_fit = time.perf_counter() - t0
    params = {
        **base.base_params,
        "label_key": label_key,
        "init": init,
        "n_train": int(len(train_idx)),
        "n_validation": int(len(val_idx)),
        "validation": validation,
        "validation_key": validation_key,
        "train": cfg.as_dict(),
        "seconds_tokenize": t_tok,
        "seconds_fit": t_fit,
        "gene_coverage": {k: v for k, v in coverage.items() if not isinstance(v, np.ndarray)},
    }
    last = history[-1]
    logger.info(
        "finetune %s: %d epochs on %d cells in %.1f s; last train loss %.4f%s",
        base.name,
        len(history),
        len(train_idx),
        t_fit,
        last["train_loss"],
        f", val accuracy {last['val_accuracy']:.3f}" if "val_accuracy" in last else "",
    )
    return FineTunedClassifier(
        net, base, classes, label_key=label_key, tokenize_options=tok_opts, params=params, history=history
    )


def annotate(
    adata: AnnData | MuData,
    *,
    model: FineTunedClassifier | str | Path,
    key_added: str | None = None,
    uncertainty_threshold: float | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    mod: str | None = "rna",
    copy: bool = False,
    **tokenize_options: Any,
) -> AnnData | MuData | None:
    """Label cells with a fine-tuned classifier (:func:`finetune` or a saved folder).

    Parameters
    ----------
    adata
        Cells x genes with the genes the classifier's model knows (in the same ``layer``/``gene_key`` as in training
        unless overridden by ``tokenize_options``). A query whose genes match none of the model's vocabulary is refused.
        When ``obs`` holds the classifier's label column with labels it was not trained on, a warning names them:
        those cells can only be mislabelled (they count as errors in :func:`scfmkit.metrics.label_transfer`).
    model
        A :class:`FineTunedClassifier` or the folder of one.
    key_added
        Prefix of the keys written (default: the classifier's label key).
    uncertainty_threshold
        Cells with uncertainty above it are labelled ``"Unknown"`` (``None``: every cell keeps its top class).
    batch_size, device, precision
        Inference settings (``precision="auto"``: bfloat16 on CUDA, float32 elsewhere).
    mod
        Modality of a MuData.
    copy
        Return a modified copy instead of writing into ``adata``.
    **tokenize_options
        Override the tokenisation options recorded at training (e.g. ``layer=``, ``input=``).

    Returns
    -------
    ``None`` or the copy. Writes

    - ``obs['<key>_pred']``: categorical predicted label (the classifier's labels, plus ``"Unknown"`` with a threshold);
    - ``obs['<key>_uncertainty']``: 1 - the top class probability;
    - ``obsm['<key>_proba']``: float32 class probabilities, columns in ``uns['<key>_annotate']['params']['labels']``;
    - ``uns['<key>_annotate']['params']``: classifier, base model and weights, labels, options.
    """
    from .._knn import UNKNOWN

    clf = model if isinstance(model, FineTunedClassifier) else FineTunedClassifier.load(model)
    if uncertainty_threshold is not None and not 0 <= uncertainty_threshold <= 1:
        msg = f"`uncertainty_threshold` must be in [0, 1] or None, got {uncertainty_threshold}."
        raise ValueError(msg)
    key = key_added or clf.label_key
    data = adata.copy() if copy else adata
    target = get_modality(data, mod)
    uns_key = f"{key}_annotate"
    check_free_keys(target, obsm=f"{key}_proba", uns=uns_key)
    if clf.label_key in target.obs:
        present = set(target.obs[clf.label_key].dropna().astype(str))
        extra = sorted(present - set(clf.labels))
        if extra:
            logger.warning(
                "annotate: obs[%r] holds labels the classifier was not trained on: %s; those cells cannot be "
                "labelled correctly.",
                clf.label_key,
                extra[:10],
            )
    proba = clf.predict_proba(target, batch_size=batch_size, device=device, precision=precision, **tokenize_options)
    p = proba.to_numpy()
    best = np.asarray(clf.labels, dtype=object)[p.argmax(axis=1)]
    uncertainty = 1.0 - p.max(axis=1)
    cats = list(clf.labels)
    if uncertainty_threshold is not None:
        best[uncertainty > uncertainty_threshold] = UNKNOWN
        if UNKNOWN not in cats:
            cats.append(UNKNOWN)
    target.obs[f"{key}_pred"] = pd.Categorical(best.astype(str), categories=cats)
    target.obs[f"{key}_uncertainty"] = uncertainty.astype(np.float64)
    target.obsm[f"{key}_proba"] = p.astype(np.float32)
    params = {
        **clf.base.base_params,
        "classifier_family": clf.family,
        "label_key": clf.label_key,
        "labels": list(clf.labels),
        "init": clf.params.get("init", "unknown"),
        "uncertainty_threshold": uncertainty_threshold,
        "tokenize": {k: v for k, v in {**clf.tokenize_options, **tokenize_options}.items() if k != "rng"},
    }
    target.uns[uns_key] = {"params": sanitize_params(params)}
    if mod is not None and target is not data:
        from .._utils import write_back

        write_back(data, mod, obsm_keys=[f"{key}_proba"])
    logger.info("annotate: wrote obs[%r], obs[%r], obsm[%r]", f"{key}_pred", f"{key}_uncertainty", f"{key}_proba")
    return data if copy else None


def finetune_proba(
    query: AnnData,
    reference: AnnData,
    model: Any,
    *,
    label_key: str,
    layer: str | None,
    reference_layer: str | None,
    gene_key: str | None,
    weights: str,
    seed: int,
    options: Mapping[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``map_to_reference(method="finetune")``: the query's class probabilities and what was run.

    ``model`` is a :class:`FineTunedClassifier` (used as it is) or a foundation model fine-tuned on ``reference``
    (``options`` go to :func:`finetune`).
    """
    if isinstance(model, FineTunedClassifier):
        clf = model
        extra = dict(options)
    else:
        clf = finetune(
            reference,
            model,
            label_key=label_key,
            weights=weights,
            layer=reference_layer,
            gene_key=gene_key,
            rng=seed,
            mod=None,
            **options,
        )
        extra = {}
    proba = clf.predict_proba(query, layer=layer, gene_key=gene_key, **extra)
    info = {
        "init": clf.params.get("init", "unknown"),
        "epochs": len(clf.history),
        "n_classes": len(clf.labels),
        "model_name": clf.base.name,
        "weights_id": clf.base.weights_id,
    }
    return proba, info
