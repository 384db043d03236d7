"""scGPT perturbation generator: parity with the reference TransformerGenerator, checkpoint loading, loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scfmkit.models._scgpt_generator import (
    GeneratorConfig,
    ScGPTGenerator,
    build_random_generator,
    generator_state_from_checkpoint,
    load_scgpt_generator,
    masked_mse_loss,
    state_dict_in_naming,
)
from scfmkit.models._scgpt_io import PAD_TOKEN, read_args, read_vocab
from scfmkit.models._scgpt_model import ScGPTConfig, random_state_dict

SIZES = {"nlayers": 2, "embsize": 64, "nheads": 4, "d_hid": 64}


@pytest.fixture(scope="module")
def golden(golden_dir):
    return dict(np.load(golden_dir / "scgpt_generator.npz"))


@pytest.fixture(scope="module")
def cfg(shared_dir) -> GeneratorConfig:
    d = shared_dir / "models" / "scgpt-human"
    vocab = read_vocab(d / "vocab.json")
    args = {**read_args(d / "args.json"), **SIZES}
    return GeneratorConfig(ScGPTConfig.from_args(args, ntoken=len(vocab), pad_id=vocab[PAD_TOKEN]))


def _inputs(g):
    b = g["values"].shape[0]
    return (
        torch.from_numpy(np.tile(g["gene_ids"], (b, 1))),
        torch.from_numpy(g["values"]),
        torch.from_numpy(g["flags"]),
    )


@pytest.mark.parametrize("naming", ["in_proj", "Wqkv"])
def test_forward_matches_reference(cfg, golden, naming):
    ref = build_random_generator(cfg, 0)
    state = state_dict_in_naming(ref, naming)
    state.update({"cls_decoder.out_layer.weight": torch.zeros(1, 64), "cls_decoder.out_layer.bias": torch.zeros(1)})
    model = ScGPTGenerator(cfg)
    mapped, report = generator_state_from_checkpoint(state, model)
    assert report.kind == "generator" and not report.new
    assert report.ignored == ["cls_decoder.out_layer.bias", "cls_decoder.out_layer.weight"]
    model.load_state_dict(mapped, strict=True)
    model.eval()
    t, v, f = _inputs(golden)
    with torch.no_grad():
        out = model(t, v, f).numpy()
    np.testing.assert_allclose(out, golden["forward"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out, golden["pred_perturb"], atol=1e-5, rtol=0)


def test_padded_rows_match_reference(cfg, golden):
    model = build_random_generator(cfg, 0).eval()
    t, v, f = _inputs(golden)
    lengths = torch.from_numpy(golden["lengths"])
    pad = torch.arange(t.shape[1])[None, :] >= lengths[:, None]
    t = t.masked_fill(pad, cfg.encoder.pad_id)
    v = v.masked_fill(pad, 0.0)
    f = f.masked_fill(pad, 0)
    with torch.no_grad():
        out = model(t, v, f, lengths).numpy()
    keep = ~pad.numpy()
    np.testing.assert_allclose(out[keep], golden["forward_padded"][keep], atol=1e-5, rtol=0)


def test_training_step_matches_reference(cfg, golden):
    """One step of the tutorial's loop: masked MSE on every position, grad clip 1.0, Adam(lr=1e-4)."""
    model = build_random_generator(cfg, 0)
    t, v, f = _inputs(golden)
    target = torch.from_numpy(golden["target"])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss = masked_mse_loss(model(t, v, f), target, torch.ones_like(v, dtype=torch.bool))
    assert abs(loss.item() - float(golden["loss"])) < 1e-5
    model.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
    opt.step()
    model.eval()
    with torch.no_grad():
        after = model(t, v, f).numpy()
    np.testing.assert_allclose(after, golden["forward_after_step"], atol=1e-5, rtol=0)


def test_parameter_layout_is_the_reference(cfg, golden_dir):
    ref = json.loads((golden_dir / "scgpt_generator_keys.json").read_text())
    ours = {k: list(v.shape) for k, v in ScGPTGenerator(cfg).state_dict().items()}
    assert {k: v for k, v in ref.items() if not k.startswith("cls_decoder.")} == ours


def test_masked_mse_is_the_reference_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    m = torch.rand(3, 5, generator=g) > 0.4
    expect = (((a - b) ** 2) * m).sum() / m.sum()
    assert torch.allclose(masked_mse_loss(a, b, m), expect)


@pytest.fixture(scope="module")
def pretrained_dir(shared_dir, tmp_path_factory):
    from scfmkit.models.scgpt import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("scgpt") / "ckpt",
        shared_dir / "models" / "scgpt-human",
        seed=3,
        nlayers=2,
        embsize=64,
        nhead=4,
        d_hid=64,
        naming="Wqkv",
    )


def test_init_from_pretrained_reports_every_key(pretrained_dir, cfg):
    module, vocab, _, report = load_scgpt_generator(pretrained_dir, seed=1)
    assert report.kind == "pretrained"
    all_keys = set(module.state_dict())
    assert set(report.loaded) | set(report.new) == all_keys and not set(report.loaded) & set(report.new)
    assert sorted(report.new) == sorted(k for k in all_keys if k.startswith(("pert_encoder.", "decoder.")))
    # the pretraining heads (decoder.fc, mvc_decoder, cls_decoder) are reported as ignored
    assert any(k.startswith("decoder.fc.") for k in report.ignored)
    assert any(k.startswith("mvc_decoder.") for k in report.ignored)
    # the encoder tensors are the checkpoint's
    ckpt = torch.load(pretrained_dir / "best_model.pt", weights_only=True)
    key = "transformer_encoder.layers.1.self_attn.Wqkv.weight"
    assert torch.equal(module.state_dict()["transformer_encoder.layers.1.self_attn.in_proj_weight"], ckpt[key])
    assert torch.equal(module.encoder.embedding.weight, ckpt["encoder.embedding.weight"])
    assert module.pert_encoder.weight[0].abs().sum() == 0  # the tutorial's pert_pad_id=0 row


def test_tutorial_generator_checkpoint_loads_whole(pretrained_dir, cfg, tmp_path, golden):
    ref = build_random_generator(cfg, 0)
    state = state_dict_in_naming(ref, "Wqkv")
    state.update({"cls_decoder.out_layer.weight": torch.zeros(1, 64), "cls_decoder.out_layer.bias": torch.zeros(1)})
    torch.save(state, tmp_path / "best_model.pt")
    module, _, _, report = load_scgpt_generator(pretrained_dir, weights_file=tmp_path / "best_model.pt")
    assert report.kind == "generator" and report.new == [] and len(report.loaded) == len(module.state_dict())
    t, v, f = _inputs(golden)
    with torch.no_grad():
        np.testing.assert_allclose(module.eval()(t, v, f).numpy(), golden["forward"], atol=1e-5, rtol=0)


def test_incomplete_or_foreign_checkpoints_are_refused(cfg):
    model = ScGPTGenerator(cfg)
    state = state_dict_in_naming(build_random_generator(cfg, 0))
    part = {k: v for k, v in state.items() if not k.startswith("decoder.bias_decoder")}
    with pytest.raises(ValueError, match="lacks"):
        generator_state_from_checkpoint(part, model)
    with pytest.raises(ValueError, match="neither"):
        generator_state_from_checkpoint({**state, "foo.weight": torch.zeros(1)}, model)
    enc = random_state_dict(cfg.encoder, 0, heads=False)
    enc.pop("encoder.enc_norm.weight")
    with pytest.raises(ValueError, match="lacks"):
        generator_state_from_checkpoint(enc, model)


def test_random_weights_are_seeded(pretrained_dir):
    a, *_, rep = load_scgpt_generator(pretrained_dir, weights="random", seed=5)
    b, *_ = load_scgpt_generator(pretrained_dir, weights="random", seed=5)
    c, *_ = load_scgpt_generator(pretrained_dir, weights="random", seed=6)
    assert rep.kind == "random" and rep.loaded == []
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["pert_encoder.weight"], sc["pert_encoder.weight"])


def test_encoders_once_per_distinct_input_equal_the_per_token_computation(cfg):
    """Gene and value encoders run on the distinct inputs and are gathered back: same outputs and gradients.

    Forward: identical. Gradients: the same sums in another order, so equal in float64 up to rounding (1e-12).
    """
    from scfmkit.models._scgpt_generator import _per_unique

    model = build_random_generator(cfg, 3).double()
    rng = np.random.default_rng(1)
    tokens = torch.from_numpy(np.tile(rng.choice(cfg.encoder.ntoken, 40, replace=False), (6, 1)))
    tokens[0, -2:] = cfg.encoder.pad_id
    values = torch.from_numpy((rng.random((6, 40)) < 0.2) * rng.gamma(2.0, 1.0, (6, 40)))
    values[1, 0] = 600.0  # above the clamp
    for enc, x in ((model.encoder, tokens), (model.value_encoder, values)):
        w = torch.from_numpy(rng.standard_normal((6, 40, cfg.encoder.d_model)))
        grads = []
        for fn in (enc, lambda z, enc=enc: _per_unique(enc, z)):
            enc.zero_grad()
            out = fn(x)
            (out * w).sum().backward()
            grads.append((out.detach(), {k: p.grad.clone() for k, p in enc.named_parameters()}))
        np.testing.assert_array_equal(grads[0][0].numpy(), grads[1][0].numpy())
        for k, g in grads[0][1].items():
            np.testing.assert_allclose(grads[1][1][k].numpy(), g.numpy(), atol=1e-12, rtol=1e-12, err_msg=k)
