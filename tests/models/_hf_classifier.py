"""A seeded HuggingFace ``BertForSequenceClassification`` folder in Geneformer's ``Classifier`` layout (test helper).

Shared by the parity test and the script that made ``tests/data/golden/bert_classifier.npz`` with ``transformers``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

N_CLASSES = 4
LABELS = ["B", "Mono", "NK", "T"]
SIZES = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}


def write_hf_classifier(out: Path, dictionaries: Path, *, seed: int = 0, with_dictionaries: bool = True) -> Path:
    """``config.json`` (id2label/label2id) + ``model.safetensors`` (HF names) [+ the dictionaries]; numpy-seeded."""
    import torch
    from safetensors.torch import save_file

    from scfmkit.models._bert import BertConfig, random_hf_state_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(dictionaries) / "config.json").read_text())
    config.update(SIZES)
    config.update(
        {
            "architectures": ["BertForSequenceClassification"],
            "id2label": {str(i): lab for i, lab in enumerate(LABELS)},
            "label2id": {lab: i for i, lab in enumerate(LABELS)},
            "problem_type": "single_label_classification",
        }
    )
    cfg = BertConfig.from_dict(config)
    sd = {k: v for k, v in random_hf_state_dict(cfg, seed).items() if not k.startswith("cls.")}
    rng = np.random.default_rng(seed + 1)
    h = cfg.hidden_size
    sd["bert.pooler.dense.weight"] = torch.from_numpy(rng.standard_normal((h, h), dtype=np.float32) * 0.2)
    sd["bert.pooler.dense.bias"] = torch.from_numpy(rng.standard_normal(h, dtype=np.float32) * 0.1)
    sd["classifier.weight"] = torch.from_numpy(rng.standard_normal((N_CLASSES, h), dtype=np.float32) * 0.5)
    sd["classifier.bias"] = torch.from_numpy(rng.standard_normal(N_CLASSES, dtype=np.float32) * 0.1)
    # LayerNorms away from 1/0, so that they are tested too
    for k in list(sd):
        if "LayerNorm" in k:
            sd[k] = sd[k] + torch.from_numpy(rng.standard_normal(sd[k].shape, dtype=np.float32) * 0.1)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if with_dictionaries:
        for p in Path(dictionaries).glob("*.pkl"):
            shutil.copyfile(p, out / p.name)
    return out


def golden_tokens(vocab_size: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded token ids (pad 0) and lengths of 6 cells of different lengths (ids >= 2: genes)."""
    rng = np.random.default_rng(seed)
    lengths = np.array([40, 7, 33, 1, 40, 18], dtype=np.int64)
    ids = np.zeros((len(lengths), int(lengths.max())), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.choice(np.arange(2, vocab_size), size=n, replace=False)
    return ids, lengths
