"""scGPT perturbation generator: fine-tuning throughput (cells/s per epoch) vs the reference tutorial loop, and
prediction throughput, fp32 CPU.

Data: Norman 2019 CRISPRa cells of ``norman2019_perturbench_subset.h5ad`` (500 genes; ``--cells-per-condition`` per
condition). scfmkit: ``ScGPTPredictor`` with seeded random weights of the chosen size (``--nlayers`` etc.; the
released model is 12 x 512 with 8 heads), no validation part, ``--epochs`` epochs of batch 64. The reference runs
when SCFMKIT_REFERENCE_SCGPT (a bowang-lab/scGPT checkout) and SCFMKIT_REFERENCE_PYTHON (an environment where its
``scgpt.model.generation_model`` imports) are set: ``_scgpt_generator_reference.py`` in a subprocess, in the same
run, on the same number of (control input, perturbed target) pairs over the same 500 genes, from the same initial
weights; prediction: the same control cells (the predictor's pool) under each test condition's flags through the
reference ``pred_perturb`` (``include_zero_gene="all"``, ``torch.no_grad``, as the tutorial's ``eval_perturb``)
after the first round's training. The sides alternate for ``--rounds`` rounds (ours, reference, ours, ...); each
round's ratio and their median are recorded. Peak RSS of both processes is recorded.

Run with ``nox -s bench`` or ``python benchmarks/bench_scgpt_generator.py --out out/bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
from _common import SHARED, Recorder, run_measured

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for the JSON-lines results")
    p.add_argument("--quick", action="store_true", help="10 cells per condition, 1 epoch (smoke run)")
    p.add_argument("--cells-per-condition", type=int, default=30)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--nlayers", type=int, default=2, help="the released model has 12")
    p.add_argument("--embsize", type=int, default=64, help="the released model has 512")
    p.add_argument("--nheads", type=int, default=4, help="the released model has 8")
    p.add_argument("--d-hid", type=int, default=64, help="the released model has 512")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two sides (median ratio)")
    p.add_argument("--n-pool", type=int, default=100, help="control cells predicted per test condition")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import anndata as ad
    import torch

    import scfmkit as fm
    from scfmkit.models._scgpt_generator import load_scgpt_generator, state_dict_in_naming
    from scfmkit.tl import ScGPTPredictor

    fm.settings.progress = False
    rec = Recorder(args.out, "scgpt_generator")
    per, epochs = (10, 1) if args.quick else (args.cells_per_condition, args.epochs)
    work = args.out / "scgpt_generator_work"
    work.mkdir(parents=True, exist_ok=True)
    a = ad.read_h5ad(SHARED / "data" / "norman2019_perturbench_subset.h5ad")
    a = a[(a.obs["dataset"] == "norman19").to_numpy()]
    lab = a.obs["condition"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    rows = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(lab == c), min(per, (lab == c).sum()), replace=False) for c in np.unique(lab)]
        )
    )
    cells = a[rows].copy()
    pb = fm.pp.pseudobulk_perturbations(cells, n_top_de=0)
    fm.pp.split_perturbations(pb, method="double", rng=0)
    train = list(pb.obs_names[pb.obs["split"] == "train"])
    test = list(pb.obs_names[pb.obs["split"] != "train"])
    sizes = {"nlayers": args.nlayers, "embsize": args.embsize, "nheads": args.nheads, "d_hid": args.d_hid}
    model_dir = SHARED / "models" / "scgpt-human"
    common = {
        **sizes,
        "batch_size": args.batch_size,
        "epochs": epochs,
        "n_genes": int(cells.n_vars),
        "precision": "fp32",
    }

    def fit_ours(round_: int):
        t0 = time.perf_counter()
        pred = ScGPTPredictor(
            model=model_dir,
            weights="random",
            architecture=sizes,
            epochs=epochs,
            batch_size=args.batch_size,
            validation_fraction=0.0,
            n_pool=args.n_pool,
            rng=0,
            device="cpu",
        ).fit(pb, train, cells=cells)
        fit_s = time.perf_counter() - t0
        log = pred.train_log
        rec.record(
            "finetune",
            impl="scfmkit",
            round=round_,
            **common,
            n_pairs=pred.n_pairs,
            torch_threads=torch.get_num_threads(),
            epoch_seconds=[round(s, 2) for s in log["seconds"]],
            cells_per_s=[round(c, 2) for c in log["cells_per_second"]],
            fit_seconds=round(fit_s, 2),
            peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        )
        return pred, log

    pred, log = fit_ours(0)
    t0 = time.perf_counter()
    pred.predict(test)
    pred_s = time.perf_counter() - t0
    rec.record(
        "predict",
        impl="scfmkit",
        **common,
        n_conditions=len(test),
        n_pool=int(pred.pool.shape[0]),
        cells_per_s=round(len(test) * pred.pool.shape[0] / pred_s, 2),
        seconds=round(pred_s, 2),
    )

    ref, py = os.environ.get("SCFMKIT_REFERENCE_SCGPT"), os.environ.get("SCFMKIT_REFERENCE_PYTHON")
    if not (ref and py):
        rec.record("finetune", impl="reference", skipped="set SCFMKIT_REFERENCE_SCGPT and SCFMKIT_REFERENCE_PYTHON")
        return
    # the same number of pairs over the same genes: perturbed cells of the training conditions, random control inputs
    X = cells.X.toarray() if hasattr(cells.X, "toarray") else np.asarray(cells.X)
    X = X.astype(np.float32)
    clab = cells.obs["condition"].astype(str).to_numpy()
    ctrl = np.flatnonzero(clab == "control")
    tgt = np.flatnonzero(np.isin(clab, train))[: pred.n_pairs]
    inp = np.where(clab[tgt] == "control", tgt, rng.choice(ctrl, tgt.size))
    flags = np.zeros_like(X[tgt], dtype=np.int64)
    pos = {g: i for i, g in enumerate(cells.var_names)}
    for r, c in enumerate(clab[tgt]):
        for g in c.split("+"):
            if g in pos:
                flags[r, pos[g]] = 1
    # prediction: the same control cells (our predictor's pool) under each test condition's flags
    pool = np.asarray(pred.pool, dtype=np.float32)
    pred_flags = np.zeros((len(test), X.shape[1]), dtype=np.int64)
    for r, c in enumerate(test):
        for gname in c.split("+"):
            if gname in pos:
                pred_flags[r, pos[gname]] = 1
    gen, vocab, _, _ = load_scgpt_generator(model_dir, weights="random", seed=0, overrides=sizes)
    torch.save(state_dict_in_naming(gen, "in_proj"), work / "state.pt")
    gene_ids = np.array([vocab.get(g, vocab["<pad>"]) for g in cells.var_names], dtype=np.int64)
    np.savez(
        work / "pairs.npz",
        inputs=X[inp],
        targets=X[tgt],
        flags=flags,
        pred_inputs=pool,
        pred_flags=pred_flags,
        gene_ids=gene_ids,
        ntoken=len(vocab),
        pad_id=vocab["<pad>"],
        embsize=args.embsize,
        nheads=args.nheads,
        d_hid=args.d_hid,
        nlayers=args.nlayers,
    )
    cmd = [py, str(HERE / "_scgpt_generator_reference.py"), "--checkout", ref, "--data", str(work / "pairs.npz")]
    cmd += ["--state", str(work / "state.pt"), "--epochs", str(epochs), "--batch-size", str(args.batch_size)]
    # the two sides alternate (ours, reference, ours, ...) so that a change of the machine's load between them
    # shows as a spread over the rounds instead of moving one ratio
    ratios = []
    for r in range(args.rounds):
        if r:
            _, log = fit_ours(r)
        wall, rss, stdout = run_measured(cmd + (["--predict"] if r == 0 else []))
        out = json.loads(stdout.strip().splitlines()[-1])
        ref_cps = [out["n_pairs"] / s for s in out["epoch_seconds"]]
        rec.record(
            "finetune",
            impl="reference",
            round=r,
            **common,
            n_pairs=out["n_pairs"],
            torch_threads=out["torch_threads"],
            epoch_seconds=[round(s, 2) for s in out["epoch_seconds"]],
            cells_per_s=[round(c, 2) for c in ref_cps],
            peak_rss_gib=round(rss, 2),
        )
        if r == 0:
            ref_pred_cps = out["n_predicted"] / out["predict_seconds"]
            rec.record(
                "predict",
                impl="reference",
                **common,
                n_conditions=len(test),
                n_pool=int(pool.shape[0]),
                cells_per_s=round(ref_pred_cps, 2),
                seconds=round(out["predict_seconds"], 2),
            )
            rec.record("predict_ratio", **common, speedup=round(len(test) * pool.shape[0] / pred_s / ref_pred_cps, 2))
        ratios.append([o / c for o, c in zip(log["cells_per_second"], ref_cps, strict=True)])
        rec.record("finetune_ratio", round=r, **common, speedup_per_epoch=[round(x, 2) for x in ratios[-1]])
    rec.record(
        "finetune_ratio_median",
        **common,
        rounds=args.rounds,
        speedup_per_epoch=[round(float(x), 2) for x in np.median(np.array(ratios), axis=0)],
    )


if __name__ == "__main__":
    main()
