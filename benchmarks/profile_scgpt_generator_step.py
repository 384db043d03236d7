"""Where one fine-tuning step of the scGPT perturbation generator spends its time: scfmkit vs the reference.

One process, one batch: scfmkit's step (as ``train_generator``: compact embedding table, ``ScGPTGenerator``, masked
MSE, backward, clip 1.0, fused Adam) and the reference tutorial's step (``TransformerGenerator`` of a
bowang-lab/scGPT checkout with an all-False padding mask, ``masked_mse_loss``, backward, clip, Adam; the body of
``_scgpt_generator_reference.py``) on the same seeded weights and the same synthetic batch (500 genes, ~4% non-zero
values), alternated. Prints the median step seconds, a ``torch.profiler`` breakdown by kernel category (self CPU
time, the minimum over ``--profiles`` profiled steps of each side) and ``scaled_dot_product_attention`` forward +
backward alone at the batch's shape.

Run in the reference's environment (torch as ours; it needs only torch and numpy), e.g.
``$SCFMKIT_REFERENCE_PYTHON benchmarks/profile_scgpt_generator_step.py --src src --checkout $SCFMKIT_REFERENCE_SCGPT``
(``--checkout``: the folder holding the reference ``scgpt`` package). scfmkit's and scgpt's package ``__init__`` are
not run (empty packages are registered), so anndata etc. are not needed there.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import types
from pathlib import Path


def _category(name: str) -> str:
    if "flash_attention" in name or "scaled_dot" in name or "_efficient_attention" in name:
        return "attention (SDPA forward + backward)"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv"):
        return "matmul (linear layers)"
    if "layer_norm" in name:
        return "layer norm"
    if "adam" in name.lower():
        return "Adam"
    if name in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::stack"):
        return "copies / cat"
    if name == "aten::sum":
        return "sums (bias gradients, loss)"
    if name in ("aten::fill_", "aten::zero_", "aten::zeros", "aten::empty"):
        return "fill / alloc"
    if "embedding" in name or "index" in name:
        return "embedding / gather"
    if "norm" in name or "clip" in name or "foreach" in name:
        return "gradient norm / clip"
    return "other element-wise"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--src", type=Path, required=True, help="scfmkit's src folder")
    p.add_argument("--checkout", type=Path, required=True, help="folder with the reference scgpt package")
    p.add_argument("--embsize", type=int, default=64)
    p.add_argument("--nheads", type=int, default=4)
    p.add_argument("--d-hid", type=int, default=64)
    p.add_argument("--nlayers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="timed steps per side (alternated)")
    p.add_argument("--profiles", type=int, default=3, help="profiled steps per side (alternated)")
    a = p.parse_args()
    for name, path in (
        ("scfmkit", a.src / "scfmkit"),
        ("scfmkit.models", a.src / "scfmkit" / "models"),
        ("scgpt", a.checkout / "scgpt"),
    ):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        mod.logger = logging.getLogger(name)
        sys.modules[name] = mod

    import numpy as np
    import torch
    from scgpt.loss import masked_mse_loss as ref_loss
    from scgpt.model.generation_model import TransformerGenerator
    from torch.profiler import ProfilerActivity, profile

    from scfmkit.models._scgpt_generator import (
        GeneratorConfig,
        build_random_generator,
        masked_mse_loss,
        state_dict_in_naming,
    )
    from scfmkit.models._scgpt_model import ScGPTConfig

    ntoken, pad, n_genes, b = 60697, 60694, 500, a.batch_size
    d, h = a.embsize, a.nheads
    cfg = GeneratorConfig(ScGPTConfig(ntoken=ntoken, d_model=d, nhead=h, d_hid=a.d_hid, nlayers=a.nlayers, pad_id=pad))
    ours = build_random_generator(cfg, 0)
    ref = TransformerGenerator(
        ntoken, d, h, a.d_hid, a.nlayers, nlayers_cls=3, n_cls=1, vocab={"<pad>": pad}, dropout=0.0,
        pad_token="<pad>", pad_value=0, pert_pad_id=0, use_fast_transformer=False,
    )  # fmt: skip
    res = ref.load_state_dict(state_dict_in_naming(ours), strict=False)
    assert not res.unexpected_keys and all(k.startswith("cls_decoder.") for k in res.missing_keys)
    rng = np.random.default_rng(0)
    genes = rng.choice(60000, n_genes, replace=False)
    x_in = ((rng.random((b, n_genes)) < 0.04) * rng.gamma(2, 1, (b, n_genes))).astype(np.float32)
    y = ((rng.random((b, n_genes)) < 0.04) * rng.gamma(2, 1, (b, n_genes))).astype(np.float32)
    flags = np.zeros((b, n_genes), np.int64)
    flags[:, 3] = 1

    # scfmkit: the compact embedding table of train_generator (only the rows the fit uses), fused Adam
    used = torch.as_tensor(np.unique(np.r_[genes, pad]))
    remap = torch.zeros(ntoken, dtype=torch.long)
    remap[used] = torch.arange(used.numel())
    compact = torch.nn.Embedding(used.numel(), d, padding_idx=int(remap[pad]))
    compact.weight.data.copy_(ours.encoder.embedding.weight.data[used])
    ours.encoder.embedding = compact
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-4, fused=True)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-4)

    def step_ours():
        t = torch.from_numpy(np.tile(genes, (b, 1)))
        v, f, tgt = torch.from_numpy(x_in.copy()), torch.from_numpy(flags.copy()), torch.from_numpy(y.copy())
        pred = ours(remap[t], v, f, None)
        loss = masked_mse_loss(pred.float(), tgt, torch.ones(b, n_genes, dtype=torch.bool))
        ours.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0, error_if_nonfinite=True)
        opt_ours.step()

    def step_ref():
        ori, pf = torch.from_numpy(x_in.copy()), torch.from_numpy(flags.copy()).long()
        tv = torch.from_numpy(y.copy())
        ids = torch.arange(n_genes)
        iv, ipf, tvals = ori[:, ids], pf[:, ids], tv[:, ids]
        mids = torch.from_numpy(genes)[ids].repeat(b, 1)
        kpm = torch.zeros_like(iv, dtype=torch.bool)
        out = ref(mids, iv, ipf, src_key_padding_mask=kpm, CLS=False, CCE=False, MVC=False, ECS=False)["mlm_output"]
        loss = ref_loss(out, tvals, torch.ones_like(iv, dtype=torch.bool))
        ref.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0, error_if_nonfinite=True)
        opt_ref.step()
        loss.item()

    sides = (("scfmkit", step_ours), ("reference", step_ref))
    ours.train()
    ref.train()
    for _ in range(2):
        step_ours()
        step_ref()
    times = {k: [] for k, _ in sides}
    for _ in range(a.steps):
        for k, fn in sides:
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"torch threads {torch.get_num_threads()}; step seconds {times}")
    print(f"median step: scfmkit {med['scfmkit']:.3f} s, reference {med['reference']:.3f} s, "
          f"ratio {med['reference'] / med['scfmkit']:.2f}x")  # fmt: skip
    best: dict[str, dict[str, float]] = {k: {} for k, _ in sides}
    for _ in range(a.profiles):
        for k, fn in sides:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            agg: dict[str, float] = {}
            for e in prof.key_averages():
                agg[_category(e.key)] = agg.get(_category(e.key), 0.0) + e.self_cpu_time_total / 1e6
            agg["TOTAL (profiled step)"] = sum(agg.values())
            for c, s in agg.items():
                best[k][c] = min(best[k].get(c, float("inf")), s)
    head = f"self CPU seconds, min over {a.profiles} profiled steps"
    print(f"{head:48s} {'scfmkit':>8s} {'reference':>10s}")
    for c in sorted(best["reference"], key=lambda c: -best["reference"][c]):
        print(f"{c:48s} {best['scfmkit'].get(c, 0.0):8.3f} {best['reference'][c]:10.3f}")
    q = torch.randn(b, h, n_genes, d // h, requires_grad=True)
    k, v = torch.randn_like(q, requires_grad=True), torch.randn_like(q, requires_grad=True)
    ts = []
    for _ in range(4):
        t0 = time.perf_counter()
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
        ts.append(time.perf_counter() - t0)
    print(
        f"SDPA forward + backward alone at {(b, h, n_genes, d // h)}: {min(ts):.3f} s per layer, "
        f"{a.nlayers * min(ts):.3f} s for {a.nlayers} layers"
    )


if __name__ == "__main__":
    main()
