"""The optional masked-LM head of the plain-torch BERT against HuggingFace ``BertForMaskedLM`` (golden logits)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

CONFIG = {
    "model_type": "bert",
    "vocab_size": 40,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 24,
    "max_position_embeddings": 12,
    "hidden_act": "relu",
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def mlm_case() -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """The golden case: config, seeded weights (biases and LayerNorms non-trivial), token ids and lengths.

    Also imported by the script that made ``tests/data/golden/bert_mlm.npz`` (see the golden README).
    """
    from scfmkit.models._bert import BertConfig, random_hf_state_dict

    sd = random_hf_state_dict(BertConfig.from_dict(CONFIG), seed=3)
    rng = np.random.default_rng(4)
    for key in sorted(sd):
        if key.endswith("bias") or "LayerNorm" in key:
            sd[key] = sd[key] + torch.from_numpy(rng.normal(scale=0.1, size=tuple(sd[key].shape)).astype(np.float32))
    lengths = np.array([12, 9, 5])
    ids = np.zeros((3, 12), np.int64)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.choice(np.arange(2, CONFIG["vocab_size"]), size=n, replace=False)
    return CONFIG, sd, ids, lengths


def _ours(sd, ids, lengths, cfg_dict):
    from scfmkit.models._bert import BertConfig, BertEncoder, convert_hf_mlm_head, convert_hf_state_dict

    cfg = BertConfig.from_dict(cfg_dict)
    enc = BertEncoder(cfg, mlm_head=True)
    w = convert_hf_state_dict(sd, cfg, cfg.num_hidden_layers)
    w |= {f"mlm.{k}": v for k, v in convert_hf_mlm_head(sd, cfg).items()}
    enc.load_state_dict(w)
    enc.eval()
    with torch.inference_mode():
        out = enc(
            torch.from_numpy(ids),
            torch.from_numpy(lengths),
            return_layers=(cfg.num_hidden_layers,),
            return_attention=cfg.num_hidden_layers,
        )
        logits = enc.mlm(out[cfg.num_hidden_layers])
    return enc, out, logits


def test_mlm_logits_match_transformers(golden_dir):
    cfg, sd, ids, lengths = mlm_case()
    gold = np.load(golden_dir / "bert_mlm.npz")
    _, out, logits = _ours(sd, ids, lengths, cfg)
    for r, n in enumerate(lengths):  # padded positions are not compared (HF computes them too, differently masked)
        np.testing.assert_allclose(logits[r, :n].numpy(), gold["logits"][r, :n], atol=1e-5, rtol=0)
        a = out["attention"][r, :, :n, :n].numpy()
        np.testing.assert_allclose(a, gold["attention_last"][r, :, :n, :n], atol=1e-6, rtol=0)


def test_log_odds_is_softmax_log_odds():
    cfg, sd, ids, lengths = mlm_case()
    enc, out, logits = _ours(sd, ids, lengths, cfg)
    hidden = out[cfg["num_hidden_layers"]][0]
    tok = torch.from_numpy(ids[0])
    with torch.inference_mode():
        lo = enc.mlm.log_odds(hidden, tok, chunk=5).numpy()
    p = torch.softmax(logits[0].double(), -1).gather(1, tok[:, None]).squeeze(1).numpy()
    np.testing.assert_allclose(lo, np.log(p / (1 - p)), atol=1e-4)


def test_missing_head_is_a_clear_error():
    from scfmkit.models._bert import BertConfig, convert_hf_mlm_head

    cfg, sd, _, _ = mlm_case()
    sd = {k: v for k, v in sd.items() if not k.startswith("cls.")}
    with pytest.raises(ValueError, match="no masked-LM head"):
        convert_hf_mlm_head(sd, BertConfig.from_dict(cfg))


def test_head_needs_all_layers():
    from scfmkit.models._bert import BertConfig, BertEncoder

    with pytest.raises(ValueError, match="all 2 layers"):
        BertEncoder(BertConfig.from_dict(CONFIG), 1, mlm_head=True)
