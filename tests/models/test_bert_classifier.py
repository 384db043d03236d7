"""Geneformer cell classifier (``BertForSequenceClassification``) against logits made by ``transformers``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ._hf_classifier import LABELS, write_hf_classifier


@pytest.fixture(scope="module")
def golden(golden_dir):
    return np.load(golden_dir / "bert_classifier.npz")


@pytest.fixture(scope="module")
def hf_folder(shared_dir, tmp_path_factory):
    return write_hf_classifier(tmp_path_factory.mktemp("hfcls") / "clf", shared_dir / "models" / "geneformer-v1")


def _logits(net, ids, lengths):
    with torch.inference_mode():
        return net(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()


def test_logits_equal_transformers(hf_folder, golden):
    from scfmkit.tl import FineTunedClassifier

    clf = FineTunedClassifier.load(hf_folder)
    assert clf.labels == LABELS == list(golden["id2label"])
    assert clf.family == "geneformer"
    got = _logits(clf.net, golden["input_ids"], golden["lengths"])
    np.testing.assert_allclose(got, golden["logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, golden["logits_eager"], atol=1e-5, rtol=0)


def test_saved_layout_is_huggingface(hf_folder, golden, tmp_path):
    """A re-saved classifier has transformers' parameter names, id2label/label2id and the same logits."""
    from safetensors.torch import load_file

    from scfmkit.tl import FineTunedClassifier

    clf = FineTunedClassifier.load(hf_folder)
    out = clf.save(tmp_path / "resaved")
    assert sorted(load_file(str(out / "model.safetensors"))) == sorted(golden["hf_keys"].tolist())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"]
    assert cfg["id2label"] == {str(i): lab for i, lab in enumerate(LABELS)}
    assert cfg["label2id"] == {lab: i for i, lab in enumerate(LABELS)}
    assert any(p.name.startswith("token_dictionary") for p in out.iterdir())
    again = FineTunedClassifier.load(out)
    np.testing.assert_array_equal(
        _logits(again.net, golden["input_ids"], golden["lengths"]),
        _logits(clf.net, golden["input_ids"], golden["lengths"]),
    )


def test_classifier_folder_without_dictionaries(shared_dir, tmp_path):
    """Geneformer's Classifier saves only config.json and weights: the dictionaries come from `dictionaries=`."""
    from scfmkit.tl import FineTunedClassifier

    folder = write_hf_classifier(tmp_path / "bare", shared_dir / "models" / "geneformer-v1", with_dictionaries=False)
    with pytest.raises(FileNotFoundError, match="dictionaries="):
        FineTunedClassifier.load(folder)
    clf = FineTunedClassifier.load(folder, dictionaries=shared_dir / "models" / "geneformer-v1")
    assert clf.base.variant == "V1"
    clf = FineTunedClassifier.load(folder, dictionaries="geneformer-v1")  # $SCFMKIT_MODELS_DIR
    assert clf.labels == LABELS


def test_generic_labels_and_override(shared_dir, tmp_path):
    from scfmkit.tl import FineTunedClassifier

    folder = write_hf_classifier(tmp_path / "c", shared_dir / "models" / "geneformer-v1")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(4)}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert FineTunedClassifier.load(folder).labels == [f"LABEL_{i}" for i in range(4)]
    assert FineTunedClassifier.load(folder, labels=list("abcd")).labels == list("abcd")
    with pytest.raises(ValueError, match="one name per class"):
        FineTunedClassifier.load(folder, labels=["a"])


def test_masked_lm_folder_is_not_a_classifier(gf_v1_dir):
    from scfmkit.tl import FineTunedClassifier

    with pytest.raises(ValueError, match="not a BertForSequenceClassification"):
        FineTunedClassifier.load(gf_v1_dir)


def test_train_mode_dropout_zero_equals_eval(hf_folder, golden):
    """The training forward (with HF BERT's dropouts) is the inference forward when the dropouts are 0."""
    from scfmkit.tl import FineTunedClassifier

    net = FineTunedClassifier.load(hf_folder).net
    net.hidden_dropout = net.attention_dropout = net.classifier_dropout = 0.0
    ref = _logits(net.eval(), golden["input_ids"], golden["lengths"])
    net.train()
    with torch.no_grad():
        got = net(torch.from_numpy(golden["input_ids"]), torch.from_numpy(golden["lengths"])).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
