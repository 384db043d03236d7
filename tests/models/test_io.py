from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from scfmkit.models import UnsafeFileError, safe_load_pickle
from scfmkit.models._io import load_state_dict


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_safe_pickle_refuses_code(tmp_path):
    p = tmp_path / "token_dictionary.pkl"
    p.write_bytes(pickle.dumps({"<pad>": 0, "x": _Evil()}))
    with pytest.raises(UnsafeFileError, match="Refusing to unpickle posix.system|Refusing to unpickle os.system"):
        safe_load_pickle(p)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_pickle_accepts_plain_and_numpy_scalars(tmp_path, protocol):
    obj = {"a": 1, "b": [1.5, "x", None, True], "c": (np.int16(7), np.float64(2.5)), "d": {"e": np.float32(0.25)}}
    p = tmp_path / "d.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = safe_load_pickle(p)
    assert out["c"] == (7, 2.5)
    assert out["d"]["e"] == 0.25
    assert out["b"] == [1.5, "x", None, True]


def test_safe_pickle_refuses_numpy_object_arrays(tmp_path):
    p = tmp_path / "d.pkl"
    p.write_bytes(pickle.dumps({"a": np.array([1, 2])}))
    with pytest.raises(UnsafeFileError):
        safe_load_pickle(p)


def test_real_dictionaries_load(shared_dir):
    d = safe_load_pickle(shared_dir / "models" / "geneformer-v1" / "token_dictionary.pkl")
    assert d["<pad>"] == 0 and len(d) == 25426


def test_torch_load_is_weights_only(tmp_path):
    p = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(2), "evil": _Evil()}, p)
    with pytest.raises(UnsafeFileError, match="weights_only"):
        load_state_dict(p)
    torch.save({"w": torch.ones(2)}, p)
    assert torch.equal(load_state_dict(p)["w"], torch.ones(2))
