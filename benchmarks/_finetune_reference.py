"""Fine-tune with a plain ``transformers`` ``Trainer`` for bench_finetune.py (run with SCFMKIT_REFERENCE_PYTHON).

Usage: ``$SCFMKIT_REFERENCE_PYTHON benchmarks/_finetune_reference.py --ckpt DIR --data tokens.npz --epochs E``

Loads the Geneformer folder as ``BertForSequenceClassification.from_pretrained(ckpt, num_labels=n)`` (what
Geneformer's ``Classifier`` does), pads each batch to its longest cell with an ``attention_mask`` (as Geneformer's
``DataCollatorForCellClassification``) and trains with the ``Trainer`` (AdamW, linear schedule, no evaluation or
checkpoints). Prints one JSON line with the seconds of every epoch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def main() -> None:
    import torch
    from transformers import BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    z = np.load(a.data)
    ids, offsets, labels = z["input_ids"], z["offsets"], z["labels"]
    cells = [
        {"input_ids": ids[offsets[i] : offsets[i + 1]].astype(np.int64), "label": int(labels[i])}
        for i in range(len(labels))
    ]

    def collate(batch):
        n = max(len(b["input_ids"]) for b in batch)
        x = np.zeros((len(batch), n), np.int64)
        m = np.zeros((len(batch), n), np.int64)
        for r, b in enumerate(batch):
            x[r, : len(b["input_ids"])] = b["input_ids"]
            m[r, : len(b["input_ids"])] = 1
        return {
            "input_ids": torch.from_numpy(x),
            "attention_mask": torch.from_numpy(m),
            "labels": torch.tensor([b["label"] for b in batch]),
        }

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    model = BertForSequenceClassification.from_pretrained(a.ckpt, num_labels=int(labels.max()) + 1)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            num_train_epochs=a.epochs,
            per_device_train_batch_size=a.batch_size,
            learning_rate=5e-5,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.001,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=cells, data_collator=collate, callbacks=[Timer()])
        trainer.train()
    print(json.dumps({"epoch_seconds": times, "n_cells": len(cells)}))


if __name__ == "__main__":
    main()
