"""scGPT cell classifier (encoder + ``ClsDecoder``) against the reference annotation tutorial's ``TransformerModel``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scfmkit.models._classifier import TrainConfig, fit_classifier
from scfmkit.models._tokens import TokenizedCells
from scfmkit.models.scgpt import load_scgpt, write_random_checkpoint

# tests/data/golden/README_scgpt_classifier.md
GOLDEN_CFG = {"seed": 0, "nlayers": 2, "embsize": 64, "nhead": 4, "d_hid": 64}
N_CLASSES = 5


@pytest.fixture(scope="module")
def golden(golden_dir):
    return np.load(golden_dir / "scgpt_classifier.npz")


@pytest.fixture(scope="module")
def model(shared_dir, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("scgptcls") / "ckpt"
    return load_scgpt(write_random_checkpoint(ckpt, shared_dir / "models" / "scgpt-human", **GOLDEN_CFG), device="cpu")


def _batch(golden):
    return {
        "tokens": torch.from_numpy(golden["tokens"].astype(np.int64)),
        "values": torch.from_numpy(golden["values"]),
        "lengths": torch.from_numpy(golden["lengths"].astype(np.int64)),
    }


def test_head_starts_from_checkpoint_cls_decoder(model, golden):
    """As the tutorial: every head tensor but the new ``out_layer`` comes from the checkpoint."""
    net = model.classification_head(N_CLASSES, seed=0)
    head = net.state_dict_reference()
    for name, value in model.cls_decoder_state.items():
        if name.startswith("out_layer."):
            assert head[f"cls_decoder.{name}"].shape != value.shape
        else:
            torch.testing.assert_close(head[f"cls_decoder.{name}"], value, rtol=0, atol=0)
    assert sorted(golden["not_loaded"]) == ["cls_decoder.out_layer.bias", "cls_decoder.out_layer.weight"]
    random = model.classification_head(N_CLASSES, seed=0, pretrained=False).state_dict_reference()
    assert not torch.equal(random["cls_decoder._decoder.0.weight"], head["cls_decoder._decoder.0.weight"])


def test_logits_equal_reference(model, golden):
    net = model.classification_head(N_CLASSES, seed=0).eval()
    with torch.inference_mode():
        got = net(**_batch(golden)).numpy()
    np.testing.assert_allclose(got, golden["logits"], atol=1e-5, rtol=0)


def test_collate_gives_reference_input(model, golden, shared_dir):
    """scfmkit's tokens of the same cells, collated, are the reference input (``<cls>`` value 0)."""
    import anndata as ad

    kang = ad.read_h5ad(shared_dir / "data" / "kang2018_ifnb_counts.h5ad")
    cells = kang[::83][:24].copy()
    assert list(cells.obs_names) == list(golden["obs_names"])
    tok, _ = model.tokenize(cells, max_length=3001, rng=0)
    b = model.classification_head(N_CLASSES, seed=0).collate(tok, np.arange(len(cells)))
    np.testing.assert_array_equal(b["tokens"].numpy(), golden["tokens"])
    np.testing.assert_array_equal(b["values"].numpy(), golden["values"])
    assert (b["values"][:, 0] == 0).all()


def test_one_training_step_equals_reference(model, golden):
    """``fit_classifier`` (Adam 1e-4, eps 1e-8, clip 1.0, cross-entropy) makes the reference tutorial's step."""
    b = _batch(golden)
    lengths = b["lengths"].numpy()
    tok = [golden["tokens"][i, : lengths[i]].astype(np.int64) for i in range(len(lengths))]
    val = [golden["values"][i, : lengths[i]] for i in range(len(lengths))]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cells = TokenizedCells(np.concatenate(tok), offsets, values=np.concatenate(val))
    net = model.classification_head(N_CLASSES, seed=0, dropout=0.0)
    cfg = TrainConfig(
        epochs=1,
        learning_rate=1e-4,
        batch_size=len(lengths),
        optimizer="adam",
        adam_eps=1e-8,
        schedule="step",
        max_grad_norm=1.0,
        shuffle="once",
        seed=0,
    )
    hist = fit_classifier(net, cells, golden["y"], np.arange(len(lengths)), None, cfg)
    assert hist[0]["train_loss"] == pytest.approx(float(golden["loss"]), abs=1e-6)
    with torch.inference_mode():
        after = net(**b).numpy()
    np.testing.assert_allclose(after, golden["logits_after_step"], atol=1e-5, rtol=0)


def test_tutorial_defaults_and_shuffle_option():
    from scfmkit.tl._finetune import FAMILY_DEFAULTS

    d = FAMILY_DEFAULTS["scgpt"]
    assert (d["epochs"], d["learning_rate"], d["batch_size"], d["optimizer"]) == (10, 1e-4, 32, "adam")
    assert (d["schedule"], d["step_gamma"], d["max_grad_norm"], d["shuffle"]) == ("step", 0.9, 1.0, "once")
    with pytest.raises(ValueError, match="shuffle"):
        TrainConfig(shuffle="never").check()
