"""Saving and loading fine-tuned classifiers: safetensors weights, the base model's files and a JSON of labels.

Geneformer: a HuggingFace ``BertForSequenceClassification`` folder, the layout Geneformer's ``Classifier`` saves
(``config.json`` with ``id2label``/``label2id``, ``model.safetensors`` in HuggingFace's names) plus the dictionaries;
such a folder saved by Geneformer (or ``transformers``) loads here too. scGPT: ``args.json``, ``vocab.json`` and
``model.safetensors`` in the reference ``TransformerModel``'s names (encoder and ``cls_decoder.*``). scBERT:
``gene_list.txt`` and ``model.safetensors`` in the reference fine-tuned ``PerformerLM``'s names (encoder and the head
as ``to_out.*``, the ``model_state_dict`` of its ``finetune.py`` checkpoints). All get
``scfmkit_classifier.json`` (labels, label key, training and tokenisation options, history). No pickles are
executed: dictionaries are read by the restricted unpickler, weights with safetensors or ``weights_only``.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

from ._base import FoundationModel

__all__ = ["META_FILE", "read_classifier", "write_classifier"]

META_FILE = "scfmkit_classifier.json"


def write_classifier(
    path: str | Path, net: Any, base: FoundationModel, labels: list[str], meta: dict[str, Any]
) -> Path:
    """Write ``net`` (fine-tuned on ``base``) with its ``labels`` and ``meta`` into the folder ``path``."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "family": net.family, "labels": list(labels), "n_classes": int(net.n_classes)}
    if net.family == "geneformer":
        from ._bert_classifier import hf_classifier_config

        (out / "config.json").write_text(json.dumps(hf_classifier_config(net.config_dict, labels), indent=2))
        save_file(net.hf_state_dict(), str(out / "model.safetensors"), metadata={"format": "pt"})
        _write_dictionaries(out, base)
    elif net.family == "scgpt":
        meta |= {"dropout": net.dropout, "nlayers_cls": net.nlayers_cls, "cls_value": net.cls_value}
        (out / "args.json").write_text(json.dumps(base.args, indent=2))
        (out / "vocab.json").write_text(json.dumps(base.vocab, indent=1))
        save_file(net.state_dict_reference(), str(out / "model.safetensors"), metadata={"format": "pt"})
    elif net.family == "scbert":
        meta |= {"h_dim": net.h_dim, "dropout": net.dropout, "base_name": base.name}
        (out / "gene_list.txt").write_text("\n".join(base.genes) + "\n")
        save_file(net.state_dict_reference(), str(out / "model.safetensors"), metadata={"format": "pt"})
    else:  # pragma: no cover - every family with "classification" is handled above
        msg = f"Cannot save a {net.family} classifier."
        raise TypeError(msg)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return out


def _write_dictionaries(out: Path, base: FoundationModel) -> None:
    """Copy the base model's dictionary files (or write its dictionaries as plain-container pickles)."""
    from ._geneformer_io import DICT_PREFIXES

    vocab = base.vocab
    src = Path(str(base.source))
    for attr, prefix in DICT_PREFIXES.items():
        value = getattr(vocab, attr)
        if value is None:
            continue
        name = vocab.files.get(attr)
        if name and (src / name).is_file():
            if (src / name).resolve() != (out / name).resolve():
                shutil.copyfile(src / name, out / name)
        else:
            with open(out / f"{prefix}.pkl", "wb") as f:
                pickle.dump(dict(value), f)


def read_classifier(path: str | Path, *, dictionaries: str | Path | None = None, labels: list[str] | None = None):
    """Read a classifier folder; returns ``(net, base_model, labels, meta)``.

    ``dictionaries`` names a folder (or a registry name) with Geneformer's dictionaries when the classifier folder
    has none (Geneformer's ``Classifier`` saves only ``config.json`` and weights). ``labels`` names the classes in id
    order when neither ``scfmkit_classifier.json`` nor ``config.json``'s ``id2label`` does.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        msg = f"Classifier folder {str(folder)!r} does not exist."
        raise FileNotFoundError(msg)
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
    family = meta.get("family")
    if family is None:
        family = "scgpt" if (folder / "args.json").is_file() else "geneformer"
    if family == "geneformer":
        net, base, names = _read_geneformer(folder, dictionaries)
    elif family == "scbert":
        net, base, names = _read_scbert(folder, meta)
    else:
        net, base, names = _read_scgpt(folder, meta)
    names = list(labels) if labels is not None else list(meta.get("labels") or names)
    if len(names) != net.n_classes:
        msg = f"{len(names)} labels given for a classifier with {net.n_classes} classes; pass one name per class."
        raise ValueError(msg)
    return net, base, names, meta


def _read_geneformer(folder: Path, dictionaries: str | Path | None):
    from ._bert import BertConfig, check_state_dict
    from ._bert_classifier import BertSequenceClassifier, labels_from_hf_config
    from ._geneformer_io import GeneformerVocab, find_dict
    from ._io import find_weights, load_state_dict, safe_load_pickle, sha256_file
    from .geneformer import GeneformerModel

    if not (folder / "config.json").is_file():
        msg = f"{folder} has no config.json; a Geneformer classifier folder holds config.json and model.safetensors."
        raise FileNotFoundError(msg)
    config = json.loads((folder / "config.json").read_text())
    vocab_dir = folder if find_dict(folder, "token_dictionary") is not None else _dictionaries_dir(dictionaries)
    if vocab_dir is None:
        msg = (
            f"{folder} holds no token_dictionary*.pkl / gene_median_dictionary*.pkl (Geneformer's Classifier saves "
            "only the model). Pass `dictionaries=` naming the folder of the pretrained model it was fine-tuned from "
            "(or 'geneformer-v1' / 'geneformer-v2' with $SCFMKIT_MODELS_DIR set)."
        )
        raise FileNotFoundError(msg)
    vocab = GeneformerVocab.from_dir(vocab_dir)
    wfile = find_weights(folder, ("model.safetensors", "pytorch_model.bin"), where="Save the classifier again.")
    state = load_state_dict(wfile)
    check_state_dict(state, BertConfig.from_dict(config), source=wfile)
    net = BertSequenceClassifier.from_hf_state_dict(config, state, pad_id=vocab.pad_id, source=wfile)
    net.eval()
    name = "geneformer-v2" if vocab.special_tokens else "geneformer-v1"
    base = GeneformerModel(
        config, vocab, state, name=name, weights_id=f"sha256:{sha256_file(wfile)}", source=str(folder)
    )
    names = labels_from_hf_config(config, net.n_classes)
    id_class = sorted(folder.glob("*id_class_dict*.pkl"))
    if names[0].startswith("LABEL_") and len(id_class) == 1:  # Geneformer's prepare_data output, if put beside
        d = safe_load_pickle(id_class[0])
        if isinstance(d, dict) and set(d) == set(range(net.n_classes)):
            names = [str(d[i]) for i in range(net.n_classes)]
    return net, base, names


def _dictionaries_dir(dictionaries: str | Path | None) -> Path | None:
    if dictionaries is None:
        return None
    p = Path(str(dictionaries)).expanduser()
    if p.is_dir():
        return p
    from ._base import get_spec, resolve_model_dir

    found = resolve_model_dir(get_spec(str(dictionaries)), None, str(dictionaries))
    if found is None:
        msg = f"No folder for {dictionaries!r}: pass the path of the pretrained model's folder as `dictionaries=`."
        raise FileNotFoundError(msg)
    return found


def _read_scgpt(folder: Path, meta: dict[str, Any]):
    import torch

    from ._io import check_finite, load_state_dict, sha256_file
    from ._scgpt_classifier import ScGPTClassifier
    from ._scgpt_io import PAD_TOKEN, read_args, read_vocab
    from ._scgpt_model import ScGPTConfig, ScGPTEncoder
    from .scgpt import ScGPTModel

    for fname in ("args.json", "vocab.json", "model.safetensors"):
        if not (folder / fname).is_file():
            msg = f"{folder} is not an scGPT classifier folder: {fname} is missing."
            raise FileNotFoundError(msg)
    vocab = read_vocab(folder / "vocab.json")
    args = read_args(folder / "args.json")
    cfg = ScGPTConfig.from_args(args, ntoken=len(vocab), pad_id=vocab[PAD_TOKEN])
    state = load_state_dict(folder / "model.safetensors")
    check_finite(state, source=folder / "model.safetensors")
    if "cls_decoder.out_layer.weight" not in state:
        msg = f"{folder / 'model.safetensors'} has no cls_decoder weights; it is not an scGPT cell classifier."
        raise ValueError(msg)
    n_classes = int(state["cls_decoder.out_layer.weight"].shape[0])
    with torch.device("meta"):
        shell = ScGPTEncoder(cfg)
    base = ScGPTModel(
        shell,
        vocab=vocab,
        args=args,
        name="scgpt-human",
        weights_id=f"sha256:{sha256_file(folder / 'model.safetensors')}",
        source=str(folder),
    )
    net = ScGPTClassifier(
        ScGPTEncoder(cfg),
        n_classes,
        pad_id=base.pad_id,
        pad_value=base.pad_value,
        dropout=float(meta.get("dropout", 0.2)),
        nlayers_cls=int(meta.get("nlayers_cls", 3)),
        cls_value=float(meta.get("cls_value", 0.0)),
    )
    try:
        net.load_state_dict_reference(state)
    except RuntimeError as err:
        msg = f"{folder / 'model.safetensors'} does not match args.json/vocab.json ({err})."
        raise ValueError(msg) from err
    net.eval()
    return net, base, [f"LABEL_{i}" for i in range(n_classes)]


def _read_scbert(folder: Path, meta: dict[str, Any]):
    import torch

    from ._io import check_finite, load_state_dict, sha256_file
    from ._performer import PerformerConfig, ScBertLM
    from ._scbert_classifier import ScBERTClassifier
    from ._scbert_io import read_gene_list
    from .scbert import ScBERTModel

    for fname in ("gene_list.txt", "model.safetensors"):
        if not (folder / fname).is_file():
            msg = f"{folder} is not an scBERT classifier folder: {fname} is missing."
            raise FileNotFoundError(msg)
    wfile = folder / "model.safetensors"
    state = load_state_dict(wfile)
    check_finite(state, source=wfile)
    if "to_out.fc3.weight" not in state:
        msg = f"{wfile} has no to_out.fc3 weights; it is not an scBERT cell classifier."
        raise ValueError(msg)
    cfg = PerformerConfig.from_state_dict(state)
    genes = read_gene_list(folder / "gene_list.txt")
    pos_dtype = state["pos_emb.emb.weight"].dtype
    with torch.device("meta"):
        shell = ScBertLM(cfg, pos_dtype=pos_dtype)
    base = ScBERTModel(
        shell,
        genes=genes,
        name=str(meta.get("base_name", "scbert")),
        weights_id=f"sha256:{sha256_file(wfile)}",
        source=str(folder),
    )
    n_classes = int(state["to_out.fc3.weight"].shape[0])
    net = ScBERTClassifier(
        ScBertLM(cfg, pos_dtype=pos_dtype),
        n_classes,
        h_dim=int(meta.get("h_dim", state["to_out.fc2.weight"].shape[0])),
        dropout=float(meta.get("dropout", 0.0)),
    )
    try:
        net.load_state_dict_reference(state)
    except RuntimeError as err:
        msg = f"{wfile} does not match gene_list.txt ({err})."
        raise ValueError(msg) from err
    net.eval()
    return net, base, [f"LABEL_{i}" for i in range(n_classes)]
