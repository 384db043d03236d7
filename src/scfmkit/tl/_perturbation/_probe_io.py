"""Save and load of the fitted probes (``geneformer_probe``, ``pca_probe``): safetensors + JSON, never pickle.

A folder holds ``predictor.json`` (format, predictor name, options, conditions, perturbation modes, the Geneformer
model's source and ``weights_id``) and ``state.safetensors`` (control mean, ridge readout, training shifts, sampled
control rows; ``pca_probe``: the control cells and their PCA; ``geneformer_probe``: the sampled cells' tokens). The
Geneformer model itself is not copied: :func:`load_probe` loads it again from its recorded source (or ``model=``)
and refuses one whose ``weights_id`` differs from the fitted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ._probe import _ProbeBase

__all__ = ["FORMAT", "load_probe", "save_probe"]

FORMAT = "scfmkit.probe_predictor/1"
#: arrays every probe writes (attribute names)
_COMMON = ("ctrl", "W", "b", "mu", "sd", "train_shifts", "cell_rows")
#: arrays of each probe's own state
_OWN = {"pca_probe": ("x_ctrl", "x_mean", "V", "x_max"), "geneformer_probe": ()}


def save_probe(p: _ProbeBase, path: str | Path) -> Path:
    """Write the fitted probe ``p`` to the folder ``path``; returns the folder."""
    from safetensors.numpy import save_file

    if not p.fitted:
        msg = f"Fit the {p.name!r} predictor before saving it."
        raise RuntimeError(msg)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(getattr(p, k)) for k in _COMMON + _OWN[p.name]}
    meta: dict[str, Any] = {
        "format": FORMAT,
        "predictor": p.name,
        "options": p.options,
        "control": p.control,
        "sep": p.sep,
        "var_names": list(p.var_names),
        "train_names": list(p.train_names),
        "modes": p._modes,
        "default_mode": p._default_mode,
    }
    if p.name == "geneformer_probe":
        t = p.tokens
        arrays["tokens.input_ids"] = np.ascontiguousarray(t.input_ids)
        arrays["tokens.offsets"] = np.ascontiguousarray(t.offsets)
        for k in ("columns", "n_genes"):
            if getattr(t, k) is not None:
                arrays[f"tokens.{k}"] = np.ascontiguousarray(getattr(t, k))
        meta["model_source"] = str(p.fm_model.source)
        meta["weights_id"] = str(p.fm_model.weights_id)
    save_file(arrays, str(path / "state.safetensors"))
    (path / "predictor.json").write_text(json.dumps(meta, indent=1))
    return path


def _reload_model(meta: dict[str, Any], model: Any, device: str | None):
    from scfmkit import models

    opts = meta["options"]
    want = meta["weights_id"]
    if model is None:
        model = opts["model"]
    seed = int(want.split(":", 1)[1]) if want.startswith("random:") else 0
    fm_model = models.load(model, weights=opts["weights"], seed=seed, device=device or opts["device"])
    if str(fm_model.weights_id) != want:
        msg = (
            f"The geneformer_probe was fitted with weights {want}, but {model!r} loads {fm_model.weights_id}; pass "
            "`model=` (the checkpoint folder or loaded model it was fitted with)."
        )
        raise ValueError(msg)
    return fm_model


def load_probe(cls: type[_ProbeBase], path: str | Path, *, model: Any = None, device: str | None = None) -> _ProbeBase:
    """Read a probe written by :func:`save_probe` as an instance of ``cls`` (safetensors and JSON only)."""
    from safetensors.numpy import load_file

    from scfmkit.models._tokens import TokenizedCells

    path = Path(path)
    if not (path / "predictor.json").is_file():
        msg = f"{str(path)!r} has no predictor.json; pass the folder written by `.save()`."
        raise FileNotFoundError(msg)
    meta = json.loads((path / "predictor.json").read_text())
    if meta.get("format") != FORMAT or meta.get("predictor") != cls.name:
        msg = f"{str(path)!r} does not hold an scfmkit {cls.name!r} predictor (predictor.json format)."
        raise ValueError(msg)
    opts = dict(meta["options"])
    if cls.name == "geneformer_probe":
        opts["model"] = opts["model"] if model is None else model
    self = cls(**opts)
    self.options = dict(meta["options"])
    if device is not None and "device" in self.options:
        self.options["device"] = device
    state = load_file(str(path / "state.safetensors"))
    for k in _COMMON + _OWN[cls.name]:
        setattr(self, k, state[k])
    self.control, self.sep = meta["control"], meta["sep"]
    self.var_names = pd.Index(meta["var_names"])
    self.train_names = list(meta["train_names"])
    self._modes, self._default_mode = dict(meta["modes"]), meta["default_mode"]
    if cls.name == "pca_probe":
        self._pos = {g: i for i, g in enumerate(self.var_names)}
    else:
        self.fm_model = _reload_model(meta, model, device)
        self.tokens = TokenizedCells(
            state["tokens.input_ids"],
            state["tokens.offsets"],
            columns=state.get("tokens.columns"),
            n_genes=state.get("tokens.n_genes"),
        )
        self._cache = {}
    self.fitted = True
    return self
