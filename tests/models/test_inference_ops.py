"""Inference helpers: the residual add on fresh outputs, and linear weights stored in the autocast dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scfmkit.models._inference_ops import add_fresh, autocast_weights

from .test_bert_packed import _encoder, _ids


@pytest.mark.parametrize(("dy", "dr"), [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_add_fresh_mixed_dtypes_equals_the_promoted_sum(dy, dr):
    gen = torch.Generator().manual_seed(0)
    y, r = torch.randn(37, 11, generator=gen).to(dy), torch.randn(37, 11, generator=gen).to(dr)
    expected = y + r
    got = add_fresh(y.clone(), r)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_add_fresh_same_dtype_is_in_place():
    y, r = torch.randn(5, 3), torch.randn(5, 3)
    expected = y + r
    out = add_fresh(y, r)
    assert out.data_ptr() == y.data_ptr()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("per_sequence", [True, False])
def test_autocast_weights_give_autocasts_exact_values(per_sequence):
    enc = _encoder("gelu")
    low = autocast_weights(enc, torch.bfloat16)
    ids, bounds = _ids()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = enc.forward_packed(ids, bounds, per_sequence=per_sequence)
        got = low.forward_packed(ids, bounds, per_sequence=per_sequence)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # the original keeps its float32 weights; only the copy's linear layers are bf16
    assert all(p.dtype == torch.float32 for p in enc.parameters())
    for module in low.modules():
        if isinstance(module, nn.Linear):
            assert module.weight.dtype == torch.bfloat16
        elif isinstance(module, nn.LayerNorm | nn.Embedding):
            assert module.weight.dtype == torch.float32


def test_geneformer_low_precision_encoder_is_cached_and_cast(gf_v1_dir):
    import scfmkit as fm

    gf = fm.models.load(gf_v1_dir)
    base = gf.encoder(2, "cpu")
    low = gf.encoder(2, "cpu", precision="bfloat16")
    assert gf.encoder(2, "cpu", precision="bf16") is low
    assert gf.encoder(2, "cpu", precision="float32") is base
    torch.testing.assert_close(low.layers[0].qkv.weight, base.layers[0].qkv.weight.bfloat16(), rtol=0, atol=0)
