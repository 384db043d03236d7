"""The torch-free BERT config module: lazily drawn random weights equal the eager draw."""

from __future__ import annotations

import torch

from scfmkit.models._bert import _ACT, random_hf_state_dict
from scfmkit.models._bert_config import ACTIVATIONS, BertConfig, LazyRandomStateDict

CFG = BertConfig(
    vocab_size=50,
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=16,
    max_position_embeddings=32,
)


def test_lazy_random_state_dict_equals_eager():
    lazy = LazyRandomStateDict(CFG, seed=3)
    assert lazy._sd is None  # nothing drawn until used
    eager = random_hf_state_dict(CFG, 3)
    assert "bert.embeddings.word_embeddings.weight" in lazy
    assert list(lazy) == list(eager) and len(lazy) == len(eager)
    for key, value in eager.items():
        torch.testing.assert_close(lazy[key], value, rtol=0, atol=0)
    assert dict(lazy.items()).keys() == eager.keys()


def test_every_accepted_activation_has_a_function():
    assert tuple(_ACT) == ACTIVATIONS
