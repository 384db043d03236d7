"""The packed BERT forward: per sequence (the CPU path) equals layer by layer (the GPU path) and the padded forward."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from scfmkit.models._bert import _ACT, _ACT_INPLACE, BertEncoder, convert_hf_state_dict, random_hf_state_dict
from scfmkit.models._bert_config import BertConfig

CFG = BertConfig(
    vocab_size=60,
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=40,
)
LENGTHS = [17, 5, 33, 1, 12]


@pytest.fixture(autouse=True)
def _two_torch_threads():
    """The per-sequence path runs one sequence per torch thread: make sure there are two of them."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _encoder(act: str) -> BertEncoder:
    cfg = dataclasses.replace(CFG, hidden_act=act)
    enc = BertEncoder(cfg)
    sd = random_hf_state_dict(cfg, seed=7)
    # non-zero biases and LayerNorm parameters, so that every term of the layer is exercised
    gen = torch.Generator().manual_seed(1)
    sd = {
        k: v + 0.1 * torch.randn(v.shape, generator=gen) if "bias" in k or "LayerNorm" in k else v
        for k, v in sd.items()
    }
    enc.load_state_dict(convert_hf_state_dict(sd, cfg, cfg.num_hidden_layers))
    return enc.eval()


def _ids() -> tuple[torch.Tensor, list[int]]:
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1, CFG.vocab_size, sum(LENGTHS)))
    return ids, [0, *np.cumsum(LENGTHS).tolist()]


def test_in_place_activations_are_the_activations():
    assert set(_ACT_INPLACE) <= set(_ACT)
    x = torch.linspace(-3, 3, 101)
    for name, f in _ACT_INPLACE.items():
        torch.testing.assert_close(f(x.clone()), _ACT[name](x), rtol=0, atol=0)


@pytest.mark.parametrize("act", list(_ACT))
def test_per_sequence_equals_layer_by_layer_and_padded(act):
    enc = _encoder(act)
    ids, bounds = _ids()
    with torch.inference_mode():
        seq = enc.forward_packed(ids, bounds, return_layers=(0, 1, 3), per_sequence=True)
        lay = enc.forward_packed(ids, bounds, return_layers=(0, 1, 3), per_sequence=False)
        assert sorted(seq) == sorted(lay) == [0, 1, 3]
        for i in lay:
            torch.testing.assert_close(seq[i], lay[i], rtol=1e-6, atol=1e-6)
        # the padded forward, masked
        n = max(LENGTHS)
        padded = torch.zeros(len(LENGTHS), n, dtype=torch.long)
        for r, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            padded[r, : b - a] = ids[a:b]
        ref = enc(padded, torch.tensor(LENGTHS))
        for r, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            torch.testing.assert_close(seq[3][a:b], ref[r, : b - a], rtol=1e-5, atol=1e-5)
        # only the first rows in the last layer, and the default (last layer only)
        first = enc.forward_packed(ids, bounds, first_rows_only=True, per_sequence=True)
        assert first.shape == (len(LENGTHS), CFG.hidden_size)
        torch.testing.assert_close(first, lay[3][bounds[:-1]], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(enc.forward_packed(ids, bounds, per_sequence=True), seq[3], rtol=0, atol=0)


def test_per_sequence_under_bf16_autocast():
    enc = _encoder("relu")
    ids, bounds = _ids()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        seq = enc.forward_packed(ids, bounds, per_sequence=True)
        lay = enc.forward_packed(ids, bounds, per_sequence=False)
    assert seq.dtype == lay.dtype
    torch.testing.assert_close(seq.float(), lay.float(), rtol=0.05, atol=0.05)


def test_cpu_default_is_per_sequence(monkeypatch):
    enc = _encoder("relu")
    ids, bounds = _ids()
    calls = []
    monkeypatch.setattr(type(enc), "_forward_per_sequence", lambda self, *a: calls.append(1) or a[0])
    with torch.inference_mode():
        enc.forward_packed(ids, bounds)
    assert calls == [1]
