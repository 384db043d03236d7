"""Inference helpers: the residual add on fresh outputs."""

from __future__ import annotations

import pytest
import torch

from scfmkit.models._inference_ops import add_fresh


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
