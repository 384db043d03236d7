"""scBERT as a cell classifier: the reference fine-tuning head and recipe, seeded training, save/load.

``tests/data/golden/scbert_classifier.npz`` holds the reference ``PerformerLM`` with finetune.py's ``Identity`` head
(built right after ``torch.manual_seed(1)``) on the checkpoint and cells of ``scbert_forward.npz``, and the learning
rates of its ``CosineAnnealingWarmupRestarts`` (see ``tests/data/golden/README_scbert.md``). Training runs on a tiny
checkpoint (300 genes, 2 layers) so that an epoch takes a second.
"""

from __future__ import annotations

import numpy as np
import pytest

import scfmkit as fm

SMALL = {"seed": 0, "depth": 2, "heads": 2, "dim_head": 32, "nb_features": 48, "ff_mult": 1}
TINY = {"seed": 0, "depth": 2, "heads": 2, "dim_head": 8, "nb_features": 8, "ff_mult": 1}


@pytest.fixture(scope="module")
def golden(golden_dir):
    return dict(np.load(golden_dir / "scbert_classifier.npz")), dict(np.load(golden_dir / "scbert_forward.npz"))


@pytest.fixture(scope="module")
def small_model(shared_dir, tmp_path_factory):
    from scfmkit.models._scbert_io import stand_in_gene_list, write_random_checkpoint
    from scfmkit.models.scbert import load_scbert

    genes = stand_in_gene_list(csv_path=shared_dir / "data" / "gencode_v44_gene_id2name.csv")
    return load_scbert(write_random_checkpoint(tmp_path_factory.mktemp("scbert") / "small", genes=genes, **SMALL))


@pytest.fixture(scope="module")
def cells(celltypist):
    a = celltypist[:24].copy()
    a.obs["group"] = np.where(np.arange(a.n_obs) % 2 == 0, "A", "B")
    a.obs["donor"] = np.repeat(["d1", "d2", "d3"], 8)
    return a


@pytest.fixture(scope="module")
def tiny_model(cells, tmp_path_factory):
    from scfmkit.models._scbert_io import write_random_checkpoint
    from scfmkit.models.scbert import load_scbert

    top = np.argsort(-np.asarray(cells.X.sum(0)).ravel(), kind="stable")[:300]
    genes = [str(g) for g in cells.var_names[np.sort(top)]]
    return load_scbert(write_random_checkpoint(tmp_path_factory.mktemp("scbert") / "tiny", genes=genes, **TINY))


def test_head_and_logits_match_reference(small_model, golden):
    import torch

    ref, fwd = golden
    net = small_model.classification_head(int(ref["n_classes"]), seed=int(ref["head_seed"]))
    sums = {k: float(v.double().sum()) for k, v in net.head.state_dict().items()}
    assert list(sums) == list(ref["head_param_names"])
    np.testing.assert_allclose(list(sums.values()), ref["head_param_sums"], rtol=1e-12)
    with torch.inference_mode():
        logits = net.eval()(torch.from_numpy(fwd["bins"][:5].astype(np.int64))).numpy()  # 5 of the 20 cells
    np.testing.assert_allclose(logits, ref["logits"][:5], atol=1e-5)
    assert "to_out.fc1.weight" in net.state_dict_reference()
    assert all(not p.requires_grad for p in small_model.module.parameters())  # the loaded model is untouched


def test_cosine_restarts_schedule_matches_reference(golden):
    from scfmkit.models._classifier import TrainConfig, cosine_restarts_lrs
    from scfmkit.tl._finetune import FAMILY_DEFAULTS

    ref, _ = golden
    opts = {k: v for k, v in FAMILY_DEFAULTS["scbert"].items() if k != "patience"}
    lrs = cosine_restarts_lrs(TrainConfig(**opts), len(ref["epoch_lrs"]))
    np.testing.assert_allclose(lrs, ref["epoch_lrs"], rtol=1e-12, atol=1e-18)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(schedule="cosine_restarts", warmup_steps=15, cycle_steps=15).check()


def test_finetune_reproducible_reference_recipe(tiny_model, cells):
    import torch

    opts = {"epochs": 2, "batch_size": 4, "train_options": {"grad_accumulation": 2}, "rng": 3}
    clf = fm.tl.finetune(cells, tiny_model, label_key="group", validation=0.25, **opts)
    again = fm.tl.finetune(cells, tiny_model, label_key="group", validation=0.25, **opts)
    assert clf.family == "scbert" and clf.labels == ["A", "B"]
    state, state2 = clf.net.state_dict(), again.net.state_dict()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    train = clf.params["train"]
    assert (train["optimizer"], train["schedule"], train["trainable"], train["best_metric"]) == (
        "adam",
        "cosine_restarts",
        "reference",
        "val_accuracy",
    )
    assert train["patience"] == 11 and train["grad_accumulation"] == 2
    # only the final LayerNorm, layers[-2] and the head are trained, as finetune.py
    start = tiny_model.classification_head(2, seed=3)
    changed = {
        k.split(".")[0] + "." + k.split(".")[1] for k in state if not torch.equal(state[k], start.state_dict()[k])
    }
    assert changed <= {"encoder_net.norm", "encoder_net.performer", "head.conv1", "head.fc1", "head.fc2", "head.fc3"}
    layer_changed = {
        k.split(".")[4] for k in state if ".net.layers." in k and not torch.equal(state[k], start.state_dict()[k])
    }
    assert layer_changed <= {"0"}
    assert clf.history[0]["lr"] == pytest.approx(1e-6)  # epoch 1 at min_lr, as the reference scheduler


def test_save_load_annotate_and_mapping(tiny_model, cells, tmp_path):
    clf = fm.tl.finetune(cells, tiny_model, label_key="group", epochs=1, batch_size=8, validation=0.0, rng=0)
    proba = clf.predict_proba(cells)
    path = clf.save(tmp_path / "clf")
    assert {"model.safetensors", "gene_list.txt", "scfmkit_classifier.json"} <= {p.name for p in path.iterdir()}
    back = fm.tl.load_classifier(path)
    assert back.family == "scbert" and back.labels == clf.labels
    np.testing.assert_allclose(back.predict_proba(cells).to_numpy(), proba.to_numpy(), atol=1e-6)
    out = fm.tl.annotate(cells, model=back, copy=True)
    assert out.obsm["group_proba"].shape == (cells.n_obs, 2)
    ref, query = cells[cells.obs["donor"] != "d3"].copy(), cells[cells.obs["donor"] == "d3"].copy()
    mapped = fm.tl.map_to_reference(
        query, ref, label_key="group", model=tiny_model, method="finetune", epochs=1, batch_size=8, copy=True
    )
    assert mapped.obs.filter(like="pred").shape[1] >= 1


def test_random_init_control(tiny_model):
    import torch

    net = tiny_model.classification_head(3, seed=0, pretrained=False)
    again = tiny_model.classification_head(3, seed=0, pretrained=False)
    own = tiny_model.classification_head(3, seed=0)
    a, b, c = net.state_dict(), again.state_dict(), own.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder_net.token_emb.weight"], c["encoder_net.token_emb.weight"])
    assert torch.equal(a["encoder_net.pos_emb.emb.weight"], c["encoder_net.pos_emb.emb.weight"])  # gene2vec fixed
    with pytest.raises(ValueError, match="n_classes"):
        tiny_model.classification_head(1)
