"""Geneformer as a cell classifier: HuggingFace ``BertForSequenceClassification`` in plain torch.

Pure tensor code, no AnnData. The network is the one Geneformer's ``Classifier`` fine-tunes (``CellClassifier`` =
``BertForSequenceClassification``): the BERT encoder, the pooler (dense + tanh on the first token's last hidden state;
Geneformer V1 has no ``<cls>``, so this is the top-ranked gene, exactly as in HuggingFace), dropout, and a linear
classifier. Weights are read from and written to HuggingFace's parameter names, so a folder saved by Geneformer's
``Classifier`` (``trainer.save_model``) loads here and a folder saved here loads in ``transformers``.

In evaluation mode the encoder runs :class:`~scfmkit.models._bert.BertEncoder` itself; in training mode the same
weights run with HuggingFace BERT's dropouts (embeddings, attention probabilities, both residual branches).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._bert import _LAYER_MAP, BertConfig, BertEncoder, convert_hf_state_dict, random_hf_state_dict
from ._tokens import TokenizedCells

__all__ = ["BertSequenceClassifier", "hf_classifier_config", "init_seed"]


class BertSequenceClassifier(nn.Module):
    """``BertForSequenceClassification``: encoder, pooler on the first token, dropout, linear classifier.

    Parameters
    ----------
    config
        The parsed ``config.json`` (a HuggingFace BERT config; dropouts are read from it).
    n_classes
        Number of classes.
    pad_id
        Token id of ``<pad>`` (padding is masked out of attention).
    """

    family = "geneformer"

    def __init__(self, config: dict[str, Any], n_classes: int, *, pad_id: int = 0) -> None:
        super().__init__()
        self.config_dict = dict(config)
        self.cfg = BertConfig.from_dict(config)
        self.n_classes = int(n_classes)
        self.pad_id = int(pad_id)
        self.hidden_dropout = float(config.get("hidden_dropout_prob", 0.1))
        self.attention_dropout = float(config.get("attention_probs_dropout_prob", 0.1))
        cls_drop = config.get("classifier_dropout")
        self.classifier_dropout = self.hidden_dropout if cls_drop is None else float(cls_drop)
        h = self.cfg.hidden_size
        self.encoder = BertEncoder(self.cfg)
        self.pooler = nn.Linear(h, h)
        self.classifier = nn.Linear(h, self.n_classes)

    # ------------------------------------------------------------------ structure used by the training loop
    def layer_modules(self) -> list[nn.Module]:
        """The transformer layers in order (``freeze_layers=k`` freezes the first ``k``, as Geneformer's)."""
        return list(self.encoder.layers)

    def embedding_modules(self) -> list[nn.Module]:
        """The input embeddings (word, position, token type, their LayerNorm)."""
        e = self.encoder
        return [e.word, e.position, e.token_type, e.ln]

    def collate(self, tokens: TokenizedCells, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` and ``lengths`` of cells ``idx`` (as Geneformer's collator)."""
        lens = tokens.lengths[idx].astype(np.int64)
        ids = np.full((len(idx), int(lens.max())), self.pad_id, np.int64)
        for r, i in enumerate(idx):
            ids[r, : lens[r]] = tokens[i]
        return {"input_ids": torch.from_numpy(ids), "lengths": torch.from_numpy(lens)}

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)``."""
        if not self.training:
            hidden = self.encoder(input_ids, lengths)
        else:
            hidden = self._train_encoder(input_ids, lengths)
        pooled = torch.tanh(self.pooler(hidden[:, 0]))
        return self.classifier(F.dropout(pooled, self.classifier_dropout, self.training))

    def _train_encoder(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        n = input_ids.shape[1]
        x = enc.ln(enc.word(input_ids) + enc.position.weight[:n] + enc.token_type.weight[0])
        x = F.dropout(x, self.hidden_dropout, True)
        mask = None
        if bool((lengths < n).any()):
            keep = torch.arange(n, device=input_ids.device)[None, :] < lengths[:, None]
            mask = keep[:, None, None, :]
        for layer in enc.layers:
            b, _, h = x.shape
            q, k, v = layer.qkv(x).view(b, n, 3, layer.n_heads, h // layer.n_heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attention_dropout)
            a = layer.attn_out(a.transpose(1, 2).reshape(b, n, h))
            x = layer.ln1(x + F.dropout(a, self.hidden_dropout, True))
            f = layer.out(layer.act(layer.inter(x)))
            x = layer.ln2(x + F.dropout(f, self.hidden_dropout, True))
        return x

    # ------------------------------------------------------------------ weights in HuggingFace's names
    @classmethod
    def from_encoder_weights(
        cls, config: dict[str, Any], encoder_state: dict[str, torch.Tensor], n_classes: int, *, pad_id: int, seed: int
    ) -> BertSequenceClassifier:
        """A new classifier on a ``BertForMaskedLM``/``BertModel`` state dict.

        Pooler and classifier are initialised as HuggingFace's ``_init_weights`` does (normal(0, initializer_range),
        zero bias), seeded.
        """
        net = cls(config, n_classes, pad_id=pad_id)
        net.encoder.load_state_dict(convert_hf_state_dict(encoder_state, net.cfg, net.cfg.num_hidden_layers))
        pooler = {k: v for k, v in encoder_state.items() if k.removeprefix("bert.").startswith("pooler.dense.")}
        gen = torch.Generator().manual_seed(int(seed))
        std = net.cfg.initializer_range
        with torch.no_grad():
            for lin in (net.pooler, net.classifier):
                lin.weight.normal_(0.0, std, generator=gen)
                lin.bias.zero_()
            if pooler:  # a BertModel checkpoint with a pretrained pooler keeps it, as from_pretrained does
                net.pooler.weight.copy_(pooler[_key(pooler, "pooler.dense.weight")])
                net.pooler.bias.copy_(pooler[_key(pooler, "pooler.dense.bias")])
        return net

    @classmethod
    def random(cls, config: dict[str, Any], n_classes: int, *, pad_id: int, seed: int) -> BertSequenceClassifier:
        """A classifier whose encoder, too, is random (the random-initialisation control), seeded.

        The encoder's seed is derived from ``seed`` (:func:`init_seed`), so it never equals the weights of a
        random-weight checkpoint written with the same seed.
        """
        cfg = BertConfig.from_dict(config)
        sd = random_hf_state_dict(cfg, init_seed(seed))
        return cls.from_encoder_weights(config, sd, n_classes, pad_id=pad_id, seed=seed)

    @classmethod
    def from_hf_state_dict(
        cls, config: dict[str, Any], state: dict[str, torch.Tensor], *, pad_id: int, source: object = "the weights"
    ) -> BertSequenceClassifier:
        """Load a ``BertForSequenceClassification`` state dict (``bert.*``, ``bert.pooler.*``, ``classifier.*``)."""
        missing = [k for k in ("classifier.weight", "classifier.bias") if k not in state]
        pool = [k for k in ("bert.pooler.dense.weight", "bert.pooler.dense.bias") if k not in state]
        if missing or pool:
            msg = (
                f"{source} lacks {missing + pool}: not a BertForSequenceClassification (Geneformer cell classifier). "
                "A pretrained BertForMaskedLM folder is fine-tuned with `fm.tl.finetune`, not loaded as a classifier."
            )
            raise ValueError(msg)
        n_classes = int(state["classifier.weight"].shape[0])
        net = cls(config, n_classes, pad_id=pad_id)
        net.encoder.load_state_dict(convert_hf_state_dict(state, net.cfg, net.cfg.num_hidden_layers))
        with torch.no_grad():
            net.pooler.weight.copy_(state["bert.pooler.dense.weight"])
            net.pooler.bias.copy_(state["bert.pooler.dense.bias"])
            net.classifier.weight.copy_(state["classifier.weight"])
            net.classifier.bias.copy_(state["classifier.bias"])
        return net

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """All weights in ``BertForSequenceClassification``'s names (what ``save_pretrained`` writes)."""
        sd = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        h = self.cfg.hidden_size
        out = {
            "bert.embeddings.word_embeddings.weight": sd["word.weight"],
            "bert.embeddings.position_embeddings.weight": sd["position.weight"],
            "bert.embeddings.token_type_embeddings.weight": sd["token_type.weight"],
            "bert.embeddings.LayerNorm.weight": sd["ln.weight"],
            "bert.embeddings.LayerNorm.bias": sd["ln.bias"],
        }
        for i in range(len(self.encoder.layers)):
            p = f"bert.encoder.layer.{i}."
            for part in ("weight", "bias"):
                q, k, v = sd[f"layers.{i}.qkv.{part}"].split(h)
                out[f"{p}attention.self.query.{part}"] = q
                out[f"{p}attention.self.key.{part}"] = k
                out[f"{p}attention.self.value.{part}"] = v
                for theirs, ours in _LAYER_MAP.items():
                    out[f"{p}{theirs}.{part}"] = sd[f"layers.{i}.{ours}.{part}"]
        out["bert.pooler.dense.weight"] = self.pooler.weight.detach().cpu()
        out["bert.pooler.dense.bias"] = self.pooler.bias.detach().cpu()
        out["classifier.weight"] = self.classifier.weight.detach().cpu()
        out["classifier.bias"] = self.classifier.bias.detach().cpu()
        return {k: v.contiguous().clone() for k, v in out.items()}


def init_seed(seed: int) -> int:
    """The seed of a random-initialisation control's encoder: a stream of ``seed`` apart from ``seed`` itself."""
    return int(np.random.SeedSequence([int(seed), 0x1A17]).generate_state(1)[0] % (2**31 - 1))


def _key(d: dict[str, Any], suffix: str) -> str:
    return next(k for k in d if k.removeprefix("bert.") == suffix)


def hf_classifier_config(config: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """``config.json`` of a ``BertForSequenceClassification`` with ``labels`` (``id2label``/``label2id``)."""
    out = {k: v for k, v in config.items() if k not in {"id2label", "label2id", "num_labels"}}
    out["architectures"] = ["BertForSequenceClassification"]
    out["model_type"] = "bert"
    out["id2label"] = {str(i): str(lab) for i, lab in enumerate(labels)}
    out["label2id"] = {str(lab): i for i, lab in enumerate(labels)}
    out["problem_type"] = "single_label_classification"
    return out


def labels_from_hf_config(config: dict[str, Any], n_classes: int) -> list[str]:
    """Class names in id order from ``config.json``'s ``id2label`` (``LABEL_<i>`` when it has none)."""
    id2label = config.get("id2label") or {}
    names = {int(k): str(v) for k, v in id2label.items()}
    if set(names) != set(range(n_classes)):
        return [f"LABEL_{i}" for i in range(n_classes)]
    return [names[i] for i in range(n_classes)]


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(math.prod(p.shape) for p in net.parameters() if p.requires_grad))
