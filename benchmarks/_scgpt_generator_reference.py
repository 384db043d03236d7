"""Runs the reference scGPT perturbation fine-tuning loop (Tutorial_Perturbation ``train``) for
bench_scgpt_generator.py, in the reference's own environment.

Usage: ``$SCFMKIT_REFERENCE_PYTHON _scgpt_generator_reference.py --checkout DIR --data FILE.npz --state FILE.pt``.
Imports ``scgpt.model.generation_model.TransformerGenerator`` and ``scgpt.loss.masked_mse_loss`` from ``--checkout``
(an empty ``scgpt`` package is registered so that the package ``__init__``, which imports the whole training stack, is
not run; ``scgpt.utils`` must import in that environment). Prints one JSON line with the seconds of each epoch.

The body of each step is the tutorial's (``include_zero_gene="all"``: every gene, ``map_raw_id_to_vocab_id``, an
all-False padding mask, ``masked_mse_loss`` on all positions, ``clip_grad_norm_(1.0)``, Adam, a GradScaler that is
disabled on CPU, StepLR per epoch). Only the data loader differs: the GEARS/PyG loader is replaced by slicing the
same (input, target, flags) arrays in a shuffled order, outside nothing that is timed but the loop itself (the
PyG collation of the GEARS loader, not installed here, is not timed). Then times the prediction of ``pred_inputs``
(control cells) under each row of ``pred_flags`` through ``pred_perturb``.
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
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--predict", action="store_true", help="also time pred_perturb on pred_inputs x pred_flags")
    a = p.parse_args()

    pkg = types.ModuleType("scgpt")
    pkg.__path__ = [str(a.checkout / "scgpt")]
    pkg.logger = logging.getLogger("scGPT")
    sys.modules["scgpt"] = pkg

    import numpy as np
    import torch
    from scgpt.loss import masked_mse_loss
    from scgpt.model.generation_model import TransformerGenerator
    from scgpt.utils import map_raw_id_to_vocab_id

    d = np.load(a.data)
    x_in, y, flags, gene_ids = d["inputs"], d["targets"], d["flags"], d["gene_ids"]
    sizes = {k: int(d[k]) for k in ("ntoken", "embsize", "nheads", "d_hid", "nlayers", "pad_id")}
    model = TransformerGenerator(
        sizes["ntoken"],
        sizes["embsize"],
        sizes["nheads"],
        sizes["d_hid"],
        sizes["nlayers"],
        nlayers_cls=3,
        n_cls=1,
        vocab={"<pad>": sizes["pad_id"]},
        dropout=0.0,
        pad_token="<pad>",
        pad_value=0,
        pert_pad_id=0,
        use_fast_transformer=False,
    )
    res = model.load_state_dict(torch.load(a.state, weights_only=True), strict=False)
    assert not res.unexpected_keys and all(k.startswith("cls_decoder.") for k in res.missing_keys)
    device = torch.device("cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9)
    scaler = torch.cuda.amp.GradScaler(enabled=False)
    n_genes = x_in.shape[1]
    rng = np.random.default_rng(0)
    seconds, losses = [], []
    for _epoch in range(a.epochs):
        order = rng.permutation(x_in.shape[0])
        t0 = time.perf_counter()
        model.train()
        total = 0.0
        for s in range(0, order.size, a.batch_size):
            idx = order[s : s + a.batch_size]
            batch_size = idx.size
            ori_gene_values = torch.from_numpy(x_in[idx])
            pert_flags = torch.from_numpy(flags[idx]).long()
            target_gene_values = torch.from_numpy(y[idx])
            input_gene_ids = torch.arange(n_genes, device=device, dtype=torch.long)
            input_values = ori_gene_values[:, input_gene_ids]
            input_pert_flags = pert_flags[:, input_gene_ids]
            target_values = target_gene_values[:, input_gene_ids]
            mapped_input_gene_ids = map_raw_id_to_vocab_id(input_gene_ids, gene_ids)
            mapped_input_gene_ids = mapped_input_gene_ids.repeat(batch_size, 1)
            src_key_padding_mask = torch.zeros_like(input_values, dtype=torch.bool, device=device)
            output_dict = model(
                mapped_input_gene_ids,
                input_values,
                input_pert_flags,
                src_key_padding_mask=src_key_padding_mask,
                CLS=False,
                CCE=False,
                MVC=False,
                ECS=False,
            )
            output_values = output_dict["mlm_output"]
            masked_positions = torch.ones_like(input_values, dtype=torch.bool)
            loss = masked_mse_loss(output_values, target_values, masked_positions)
            model.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
            scaler.step(optimizer)
            scaler.update()
            total += loss.item()
        seconds.append(time.perf_counter() - t0)
        losses.append(total)
        scheduler.step()
    # prediction as the tutorial's eval_perturb: batches of control cells under one condition's flags through
    # pred_perturb (include_zero_gene="all") without gradients; the GEARS batch (x = (cells * genes, 2) values and
    # flags) is assembled outside the timed part, as the loader does
    pool, pflags = d["pred_inputs"], d["pred_flags"] if a.predict else d["pred_flags"][:0]

    class _Batch:
        def __init__(self, x, pert):
            self.x, self.pert = x, pert

        def to(self, device):
            self.x = self.x.to(device)
            return self

    batches = []
    for f in pflags:
        for s in range(0, pool.shape[0], a.batch_size):
            v = torch.from_numpy(pool[s : s + a.batch_size])
            fl = torch.from_numpy(np.broadcast_to(f, v.shape).copy()).float()
            batches.append(_Batch(torch.stack([v.reshape(-1), fl.reshape(-1)], 1), ["p"] * v.shape[0]))
    t0 = time.perf_counter()
    n_pred = 0
    for b in batches:
        with torch.no_grad():
            p = model.pred_perturb(b, include_zero_gene="all", gene_ids=gene_ids, amp=False)
        n_pred += p.shape[0]
    predict_seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "epoch_seconds": seconds,
                "n_pairs": int(x_in.shape[0]),
                "torch_threads": torch.get_num_threads(),
                "n_predicted": n_pred,
                "predict_seconds": predict_seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
