"""Fit + predict time of the linear perturbation baselines on the Norman 2019 subset (JSON lines).

Run: ``python benchmarks/bench_perturbation.py [--out DIR] [--repeats N]`` (``nox -s bench`` runs it with ``--out``).
Needs ``SCFMKIT_DATA_DIR`` (or ``../shared/data``). Times are wall-clock medians over ``--repeats`` fits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="folder for perturbation.jsonl")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if "SCFMKIT_DATA_DIR" not in os.environ:
        os.environ["SCFMKIT_DATA_DIR"] = str(Path(__file__).resolve().parents[2] / "shared" / "data")

    import scfmkit as fm

    fm.settings.progress = False
    full = fm.datasets.norman2019()
    cells = full[full.obs["dataset"] == "norman19"]
    conds = cells.obs["condition"].astype(str)
    singles = {c for c in conds.unique() if "+" not in c and c != "control"}
    doubles = [c for c in conds.unique() if "+" in c and all(g in singles for g in c.split("+"))]
    cells = cells[conds.isin(["control", *singles, *doubles]).to_numpy()].copy()

    import scanpy  # noqa: F401 - imported before timing, so the pseudobulk time is the work alone

    t0 = time.perf_counter()
    pb = fm.pp.pseudobulk_perturbations(cells)
    t_pb = time.perf_counter() - t0
    fm.pp.split_perturbations(pb, method="double", rng=0)
    train = list(pb.obs_names[pb.obs["split"] == "train"])
    targets = list(pb.obs_names[pb.obs["split"] != "train"])
    rng = np.random.default_rng(0)
    genes = sorted({*pb.var_names, *singles})
    import pandas as pd

    random_emb = pd.DataFrame(rng.normal(size=(len(genes), 10)), index=genes)
    methods = {
        "control": {},
        "mean": {},
        "additive": {},
        "linear": {"method": "linear", "perturbation_embedding": "training"},
        "linear_pretrained_embedding": {"method": "linear", "gene_embedding": random_emb},
    }
    lines = [
        {
            "bench": "perturbation_pseudobulk",
            "cells": int(cells.n_obs),
            "genes": int(cells.n_vars),
            "conditions": int(pb.n_obs),
            "seconds": round(t_pb, 4),
        }
    ]
    for label, spec in methods.items():
        spec = dict(spec)
        name = spec.pop("method", label)
        fits, preds = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            p = fm.tl.fit_predictor(pb, name, train=train, **spec)
            t1 = time.perf_counter()
            p.predict(targets)
            t2 = time.perf_counter()
            fits.append(t1 - t0)
            preds.append(t2 - t1)
        total = np.add(fits, preds)
        lines.append(
            {
                "bench": "perturbation_fit_predict",
                "method": label,
                "n_train": len(train),
                "n_predict": len(targets),
                "genes": int(pb.n_vars),
                "repeats": args.repeats,
                "fit_s_median": round(float(np.median(fits)), 5),
                "predict_s_median": round(float(np.median(preds)), 5),
                "total_s_median": round(float(np.median(total)), 5),
                "total_s_max": round(float(np.max(total)), 5),
                "machine": platform.machine(),
            }
        )
    for line in lines:
        print(json.dumps(line))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "perturbation.jsonl", "w") as fh:
            fh.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
