"""scBERT as a cell classifier: the Performer encoder and the reference fine-tuning head, in plain torch.

Pure tensor code, no AnnData. As TencentAILabHealthcare/scBERT ``finetune.py``: the pretrained ``PerformerLM`` with
its ``to_out`` replaced by ``Identity`` (:class:`~scfmkit.models._performer.ClassificationHead`: a ``1 x 200``
convolution over every position's encoding, ReLU, then ``fc1`` positions -> 512, ``fc2`` 512 -> 128, ``fc3`` ->
classes with ReLU and dropout 0 between). Parameter names are the reference's, so :meth:`state_dict_reference` is the
``model_state_dict`` of its fine-tuned checkpoints (``to_out.conv1.weight``, ``to_out.fc1.weight``, ...).

The reference trains only the final LayerNorm, the second-to-last Performer layer (``performer.net.layers[-2]``) and
the head (:meth:`reference_trainable`, used by ``TrainConfig(trainable="reference")``); with one layer there is no
second-to-last one and only LayerNorm and head train. In training mode the FAVOR+ projection matrices of every layer
are redrawn after every 1000 forward calls (the reference ``Performer``'s ``feature_redraw_interval``), from torch's
global generator, which the training loop seeds; evaluation uses the stored matrices.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ._performer import ClassificationHead, FastAttention, ScBertLM, gaussian_orthogonal_random_matrix
from ._tokens import TokenizedCells

__all__ = ["FEATURE_REDRAW_INTERVAL", "ScBERTClassifier"]

FEATURE_REDRAW_INTERVAL = 1000  # the reference Performer's default


class ScBERTClassifier(nn.Module):
    """scBERT encoder + the reference ``Identity`` head on the final encodings of all positions.

    Parameters
    ----------
    encoder
        The scBERT ``PerformerLM`` (copied: the loaded model's own weights stay untouched).
    n_classes
        Number of classes.
    h_dim, dropout
        Width of ``fc2`` and the head's dropout (the reference: 128 and 0).
    seed
        Seed of the head's initialisation (torch's default init, drawn under ``torch.manual_seed(seed)`` in a forked
        generator: the same numbers as the reference's ``Identity(...)`` built right after ``torch.manual_seed(seed)``).
    """

    family = "scbert"

    def __init__(self, encoder: ScBertLM, n_classes: int, *, h_dim: int = 128, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        self.cfg = encoder.cfg
        self.n_classes = int(n_classes)
        self.h_dim = int(h_dim)
        self.dropout = float(dropout)
        self.encoder_net = copy.deepcopy(encoder)
        self.encoder_net.to_out = None  # the reference replaces the pretraining head with the classifier
        for p in self.encoder_net.parameters():
            p.requires_grad_(True)
        self.encoder_net.pos_emb.emb.weight.requires_grad_(False)  # gene2vec is fixed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.head = ClassificationHead(
                self.cfg.max_seq_len, self.n_classes, dim=self.cfg.dim, h_dim=self.h_dim, dropout=self.dropout
            )

    @classmethod
    def random(cls, encoder: ScBertLM, n_classes: int, *, seed: int, **kwargs) -> ScBERTClassifier:
        """A classifier whose encoder is drawn at random too (the random-initialisation control), seeded.

        The encoder keeps the checkpoint's fixed gene2vec table; everything else is redrawn with the reference's
        initialisation from a seed derived from ``seed`` (:func:`~scfmkit.models._bert_classifier.init_seed`).
        """
        from ._bert_classifier import init_seed
        from ._performer import random_state_dict

        g2v = encoder.pos_emb.emb.weight.detach()[:-1].double().numpy()
        state = random_state_dict(encoder.cfg, g2v, init_seed(seed))
        state["pos_emb.emb.weight"] = state["pos_emb.emb.weight"].to(encoder.pos_emb.emb.weight.dtype)
        fresh = ScBertLM(encoder.cfg, pos_dtype=encoder.pos_emb.emb.weight.dtype)
        with torch.no_grad():
            fresh.load_state_dict(state, strict=True)
        return cls(fresh, n_classes, seed=seed, **kwargs)

    # ------------------------------------------------------------------ structure used by the training loop
    def layer_modules(self) -> list[nn.Module]:
        """The Performer layers in order (each an attention and a feed-forward block)."""
        return list(self.encoder_net.performer.net.layers)

    def embedding_modules(self) -> list[nn.Module]:
        """The expression-token embedding (gene2vec is fixed in any case)."""
        return [self.encoder_net.token_emb]

    def reference_trainable(self) -> list[nn.Module]:
        """What ``finetune.py`` trains: the final LayerNorm, ``performer.net.layers[-2]`` and the head."""
        return [self.encoder_net.norm, *self.layer_modules()[-2:-1], self.head]

    def collate(self, tokens: TokenizedCells, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """The bins of cells ``idx`` (every cell has all ``n_genes + 1`` positions) as ``(b, n)`` int64."""
        rows = np.stack([tokens.values_of(int(i)) for i in idx]).astype(np.int64)
        return {"bins": torch.from_numpy(rows)}

    # ------------------------------------------------------------------ forward
    def forward(self, bins: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)``."""
        if self.training:
            self._check_redraw()
        return self.head(self.encoder_net(bins))

    def _check_redraw(self) -> None:
        """The reference ``Performer.check_redraw_projections``: redraw every 1000 training calls."""
        calls = self.encoder_net.performer.calls_since_last_redraw
        if int(calls) >= FEATURE_REDRAW_INTERVAL:
            with torch.no_grad():
                for m in self.encoder_net.modules():
                    if isinstance(m, FastAttention):
                        rows, cols = m.projection_matrix.shape
                        m.projection_matrix.copy_(gaussian_orthogonal_random_matrix(rows, cols))
            calls.zero_()
            return
        calls += 1

    def state_dict_reference(self) -> dict[str, torch.Tensor]:
        """Weights in the reference fine-tuned ``PerformerLM``'s names (the head as ``to_out.*``)."""
        out = {k: v.detach().cpu() for k, v in self.encoder_net.state_dict().items()}
        out.update({f"to_out.{k}": v.detach().cpu() for k, v in self.head.state_dict().items()})
        return {k: v.contiguous().clone() for k, v in out.items()}

    def load_state_dict_reference(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`state_dict_reference`'s layout (every key required)."""
        enc = {k: v for k, v in state.items() if not k.startswith("to_out.")}
        head = {k.removeprefix("to_out."): v for k, v in state.items() if k.startswith("to_out.")}
        self.encoder_net.load_state_dict(enc)
        self.head.load_state_dict(head)
