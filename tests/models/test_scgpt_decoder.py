"""scGPT's expression decoder (reference ``ExprDecoder``) against golden outputs of the reference class."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def decoder_case() -> tuple[dict, np.ndarray]:
    """The golden case: ``decoder.*`` tensors (with the zero-probability branch) and an input ``(2, 5, 8)``.

    Also imported by the script that made ``tests/data/golden/scgpt_expr_decoder.npz`` (see the golden README).
    """
    gen = torch.Generator().manual_seed(11)
    state = {}
    for branch in ("fc", "zero_logit"):
        for i, (o, n) in zip((0, 2, 4), ((8, 8), (8, 8), (1, 8)), strict=True):
            state[f"decoder.{branch}.{i}.weight"] = torch.empty(o, n).uniform_(-0.5, 0.5, generator=gen)
            state[f"decoder.{branch}.{i}.bias"] = torch.empty(o).uniform_(-0.5, 0.5, generator=gen)
    x = torch.randn(2, 5, 8, generator=gen).numpy()
    return state, x


def _cfg():
    from scfmkit.models._scgpt_model import ScGPTConfig

    return ScGPTConfig(ntoken=10, d_model=8, nhead=2, d_hid=8, nlayers=1)


def test_expr_decoder_matches_reference(golden_dir):
    from scfmkit.models._scgpt_model import expr_decoder_from_state

    state, x = decoder_case()
    gold = np.load(golden_dir / "scgpt_expr_decoder.npz")
    dec = expr_decoder_from_state(state, _cfg())
    assert dec.explicit_zero_prob
    with torch.inference_mode():
        out = dec(torch.from_numpy(x))
    np.testing.assert_allclose(out["pred"].numpy(), gold["pred"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["zero_probs"].numpy(), gold["zero_probs"], atol=1e-6, rtol=0)
    # without the zero branch (the released whole-human layout) only `pred`, the same numbers
    plain = expr_decoder_from_state({k: v for k, v in state.items() if ".fc." in k}, _cfg())
    with torch.inference_mode():
        np.testing.assert_allclose(plain(torch.from_numpy(x))["pred"].numpy(), gold["pred"], atol=1e-6, rtol=0)


def test_no_decoder_or_batch_labels_gives_none():
    from scfmkit.models._scgpt_model import expr_decoder_from_state

    state, _ = decoder_case()
    assert expr_decoder_from_state({}, _cfg()) is None
    wide = dict(state)
    wide["decoder.fc.0.weight"] = torch.zeros(8, 16)  # use_batch_labels: input is 2 x d_model
    assert expr_decoder_from_state(wide, _cfg()) is None


def test_random_checkpoint_has_a_decoder(tmp_path, shared_dir):
    from scfmkit.models.scgpt import load_scgpt, write_random_checkpoint

    d = write_random_checkpoint(tmp_path / "s", shared_dir / "models" / "scgpt-human", nlayers=1, embsize=16, nhead=2)
    a = load_scgpt(d, weights="pretrained")
    b = load_scgpt(d, weights="random", seed=0)
    assert a.expr_decoder is not None and b.expr_decoder is not None
    for (k, v), (_, w) in zip(a.expr_decoder.state_dict().items(), b.expr_decoder.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
