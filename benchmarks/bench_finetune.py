"""Fine-tuning throughput: scfmkit's Geneformer classifier loop against a plain ``transformers`` ``Trainer``.

Both train the same ``BertForSequenceClassification`` (a random-weight Geneformer V1 in the released layout with the
real dictionaries) on the same tokens (real PBMC cells, ``pbmc_3batch``), batch 12, AdamW lr 5e-5 with the linear
schedule, float32 on the CPU, in one run. The reference needs ``transformers``: set SCFMKIT_REFERENCE_PYTHON to a
Python where it imports (torch pinned to the same version); without it only scfmkit is measured.

    SCFMKIT_REFERENCE_PYTHON=<venv>/bin/python python benchmarks/bench_finetune.py --out out/bench [--quick | --full]

``--full``: the released Geneformer V1 size (6 layers, hidden 256, 4 heads, intermediate 512, 2048 positions: every
expressed gene of a cell is a token), 200 cells, 2 epochs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import SHARED, Recorder, parse_args, run_measured  # noqa: E402


def main() -> None:
    import anndata as ad
    import torch

    import scfmkit as fm
    from scfmkit.models._classifier import TrainConfig, fit_classifier
    from scfmkit.models.geneformer import write_random_checkpoint

    full = "--full" in sys.argv
    if full:
        sys.argv.remove("--full")
    args = parse_args(__doc__.splitlines()[0])
    rec = Recorder(args.out, "bench_finetune_full" if full else "bench_finetune")
    n_cells, epochs = (48, 1) if args.quick else (200, 2) if full else (240, 2)
    positions = 2048 if full else 256
    sizes = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    if full:
        sizes = {"num_hidden_layers": 6, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512}
    threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    try:
        vocab = work / "vocab"
        shutil.copytree(SHARED / "models" / "geneformer-v1", vocab)
        config = json.loads((vocab / "config.json").read_text())
        config["max_position_embeddings"] = positions
        (vocab / "config.json").write_text(json.dumps(config))
        ckpt = write_random_checkpoint(work / "ckpt", vocab, seed=0, **sizes)
        model = fm.models.load(ckpt)
        adata = ad.read_h5ad(SHARED / "data" / "pbmc_3batch_symphony.h5ad")
        adata = adata[np.random.default_rng(0).choice(adata.n_obs, n_cells, replace=False)].copy()
        tokens, _ = model.tokenize(adata, input="lognorm")
        classes = sorted(set(adata.obs["cell_type"].astype(str)))
        y = np.array([classes.index(c) for c in adata.obs["cell_type"].astype(str)], np.int64)
        data = work / "tokens.npz"
        np.savez(data, input_ids=tokens.input_ids, offsets=tokens.offsets, labels=y)
        config_row = {
            "n_cells": n_cells,
            "epochs": epochs,
            "positions": positions,
            "mean_tokens": float(tokens.lengths.mean()),
            "threads": threads,
            **sizes,
        }
        rec.record("config", **config_row)

        net = model.classification_head(len(classes), seed=0)
        cfg = TrainConfig(
            epochs=epochs,
            learning_rate=5e-5,
            batch_size=12,
            optimizer="adamw",
            weight_decay=0.001,
            schedule="linear",
            warmup_steps=0,
            show_progress=False,
        )
        history = fit_classifier(net, tokens, y, np.arange(n_cells), None, cfg)
        ours = [n_cells / h["seconds"] for h in history]
        rec.record("scfmkit", cells_per_s_per_epoch=ours)

        py = os.environ.get("SCFMKIT_REFERENCE_PYTHON")
        if not py:
            rec.record("reference", skipped="set SCFMKIT_REFERENCE_PYTHON to a Python with transformers")
            return
        cmd = [py, str(HERE / "_finetune_reference.py"), "--ckpt", str(ckpt), "--data", str(data)]
        cmd += ["--epochs", str(epochs), "--threads", str(threads)]
        _, rss, stdout = run_measured(cmd)
        ref = json.loads(stdout.strip().splitlines()[-1])
        theirs = [n_cells / s for s in ref["epoch_seconds"]]
        rec.record("transformers_trainer", cells_per_s_per_epoch=theirs, rss_gib=rss)
        rec.record("ratio", scfmkit_over_trainer=[a / b for a, b in zip(ours, theirs, strict=True)])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
