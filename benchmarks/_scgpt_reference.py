"""Runs the reference scGPT ``embed_data`` (bowang-lab/scGPT) for bench_scgpt.py, in the reference's own environment.

Usage: ``$SCFMKIT_REFERENCE_PYTHON _scgpt_reference.py --checkout DIR --h5ad FILE --ckpt DIR --out FILE.npy``.
Imports the reference from ``--checkout`` only; prints one JSON line with the timings.

Two adjustments, neither touching what is timed:

- the reference package ``__init__`` imports its training stack (``datasets``, ``wandb``, ...), which inference does
  not need; the runner registers an empty ``scgpt`` package pointing at the checkout so that the submodules that
  ``embed_data`` uses import as they are;
- the reference's pure-Python vocabulary fallback (used when torchtext is not importable) rebuilds its whole index on
  each inserted token, which takes minutes for 60k genes; appending at the end (the only insert that loading a
  vocab.json does) is replaced by an equivalent O(1) append. Vocabulary loading is outside the timed embedding.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import types
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkout", type=Path, required=True)
    p.add_argument("--h5ad", type=Path, required=True)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=1200)
    a = p.parse_args()

    pkg = types.ModuleType("scgpt")
    pkg.__path__ = [str(a.checkout / "scgpt")]
    pkg.logger = logging.getLogger("scGPT")
    sys.modules["scgpt"] = pkg

    import numpy as np
    from scgpt.tasks import cell_emb
    from scgpt.tokenizer import vocab_compat

    original_insert = vocab_compat.BuiltinVocab.insert_token

    def append_insert(self, token, index):
        if index == len(self._itos) and token not in self._stoi:
            self._itos.append(token)
            self._stoi[token] = index
        else:
            original_insert(self, token, index)

    vocab_compat.BuiltinVocab.insert_token = append_insert

    timed = {}
    inner = cell_emb.get_batch_cell_embeddings

    def timed_embeddings(*args, **kwargs):
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        timed["embed_seconds"] = time.perf_counter() - t
        return out

    cell_emb.get_batch_cell_embeddings = timed_embeddings
    t = time.perf_counter()
    res = cell_emb.embed_data(
        str(a.h5ad),
        a.ckpt,
        gene_col="index",
        max_length=a.max_length,
        batch_size=a.batch_size,
        device="cpu",
        use_fast_transformer=False,
        return_new_adata=True,
    )
    total = time.perf_counter() - t
    np.save(a.out, np.asarray(res.X, dtype=np.float32))
    print(json.dumps({"total_seconds": total, **timed, "n_cells": int(res.n_obs)}))


if __name__ == "__main__":
    main()
