"""The full perturbation table of docs/when_does_fm_help.md: every method with its random-weight control, 5 seeds.

Norman 2019 CRISPRa (split ``double``, test + holdout conditions) and Papalexi 2021 knock-outs (unseen targets: half
of the targets held out at random), seeds 0-4, every metric of ``fm.tl.benchmark_perturbation``: mean ± sd over
(seed, condition) rows per method, and the fit + predict seconds per seed. The configuration is the one of
``notebooks/perturbation_foundation_models.ipynb`` (which runs 3 seeds to stay short): 12 cells per condition, the
scGPT generator and the probe's Geneformer at a small CPU size (2 layers, 64 dimensions, 1 epoch of fine-tuning).

No pretrained weights exist on the machine this was written for, so every foundation-model row is its random-weight
control and is named so; with the released weights in ``$SCFMKIT_MODELS_DIR`` pass ``--pretrained`` to add the
pretrained rows beside them.

Usage (writes ``<out>/perturbation_fm_table.md``; ``--csv`` adds ``<out>/perturbation_fm_scores.csv``)::

    python benchmarks/perturbation_fm_table.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(os.environ.get("SCFMKIT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
HEADLINE = ["pearson_delta", "mse", "pearson_delta_de", "direction_de", "mae", "discrimination_score_l1"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--cells-per-condition", type=int, default=12)
    p.add_argument("--epochs", type=int, default=1, help="scGPT fine-tuning epochs (the tutorial: 15)")
    p.add_argument("--csv", action="store_true", help="also write every (seed, condition, metric) score as CSV")
    p.add_argument("--pretrained", action="store_true", help="add pretrained rows (needs the released weights)")
    return p.parse_args()


def subsample(adata, key: str, n: int, rng: int = 0):
    gen = np.random.default_rng(rng)
    lab = adata.obs[key].astype(str).to_numpy()
    keep = [gen.choice(np.flatnonzero(lab == c), min(n, int((lab == c).sum())), replace=False) for c in np.unique(lab)]
    return adata[np.sort(np.concatenate(keep))].copy()


def summary(res: pd.DataFrame) -> pd.DataFrame:
    """Metrics x methods, ``mean ± sd`` over (seed, condition) rows, plus a fit-seconds row."""
    agg = res.groupby(["metric", "method"], sort=False)["value"].agg(["mean", "std", "count"])
    cell = agg.apply(lambda r: f"{r['mean']:.3f} ± {r['std']:.3f}" if r["count"] else "n/a", axis=1)
    table = cell.unstack("method")
    metrics = [m for m in HEADLINE if m in table.index] + sorted(set(table.index) - set(HEADLINE))
    table = table.reindex(metrics)[list(pd.unique(res["method"]))]
    secs = res.attrs["fit_seconds"]
    table.loc["fit + predict seconds per seed"] = [
        f"{np.mean(secs[m]):.1f} ± {np.std(secs[m], ddof=1):.1f}" if m in secs else "" for m in table.columns
    ]
    table.columns.name = None
    return table


def fm_methods(args, gf_small: Path, *, measured_targets: bool) -> dict:
    """The foundation-model rows: every one with weights='random' (and 'pretrained' with --pretrained)."""
    import scfmkit as fm

    out = {}
    kinds = ["random", "pretrained"] if args.pretrained else ["random"]
    for w in kinds:
        tag = "random weights" if w == "random" else "pretrained"
        for name, reg in (("scGPT", "scgpt-human"), ("Geneformer V1", "geneformer-v1")):
            model = fm.models.load(reg, weights=w)
            out[f"linear, {name} gene embeddings ({tag})"] = {"method": "linear", "gene_embedding": model}
            if measured_targets:  # the paper's variant: P from the training PCA, needs measured perturbed genes
                out[f"linear, {name} gene embeddings, PCA perturbation rows ({tag})"] = {
                    "method": "linear",
                    "gene_embedding": model,
                    "perturbation_embedding": "pca_genes",
                }
        arch = {"nlayers": 2, "embsize": 64, "nheads": 4, "d_hid": 64} if w == "random" else None
        out[f"scgpt generator ({tag}, {args.epochs} epoch)"] = {
            "method": "scgpt",
            "weights": w,
            "architecture": arch,
            "epochs": args.epochs,
            "batch_size": 32,
            "n_pool": 30,
        }
        gf_model = str(gf_small) if w == "random" else "geneformer-v1"
        out[f"geneformer_probe ({tag})"] = {
            "method": "geneformer_probe",
            "model": gf_model,
            "weights": w,
            "n_cells": 30,
        }
    return out


def main() -> None:
    args = parse_args()
    os.environ.setdefault("SCFMKIT_DATA_DIR", str(SHARED / "data"))
    os.environ.setdefault("SCFMKIT_MODELS_DIR", str(SHARED / "models"))
    import scfmkit as fm
    from scfmkit.models.geneformer import write_random_checkpoint

    fm.settings.progress = False
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = range(args.seeds)
    gf_small = write_random_checkpoint(
        Path(tempfile.mkdtemp()) / "gf-v1-small",
        Path(os.environ["SCFMKIT_MODELS_DIR"]) / "geneformer-v1",
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        seed=0,
    )
    pca_probe = {"method": "pca_probe", "n_cells": 30}
    t_start = time.perf_counter()

    # Norman 2019: doubles whose singles are measured
    full = fm.datasets.norman2019()
    norman = full[full.obs["dataset"] == "norman19"]
    conds = norman.obs["condition"].astype(str)
    singles = sorted(c for c in conds.unique() if "+" not in c and c != "control")
    eligible = [d for d in conds.unique() if "+" in d and all(g in singles for g in d.split("+"))]
    norman = subsample(
        norman[conds.isin(["control", *singles, *eligible]).to_numpy()], "condition", args.cells_per_condition
    )
    methods = {
        "control": {},
        "mean": {},
        "cell_mean": {},
        "additive": {},
        "linear": {"method": "linear", "perturbation_embedding": "training"},
        "pca_probe (no foundation model)": pca_probe,
        **fm_methods(args, gf_small, measured_targets=False),
    }
    res_n = fm.tl.benchmark_perturbation(
        norman, methods=methods, split="double", seeds=seeds, evaluate=("test", "holdout")
    )

    # Papalexi 2021: unseen targets (targets outside Geneformer's dictionaries leave the comparison for every method)
    pap = fm.datasets.papalexi2021()
    known = fm.models.load(gf_small).match_genes(pap.obs["target"].unique())
    targets = [
        t for t, c in zip(pap.obs["target"].unique(), known.column, strict=True) if c >= 0 or t == "non-targeting"
    ]
    pap = subsample(pap[pap.obs["target"].isin(targets).to_numpy()], "target", args.cells_per_condition)
    pap.obs["perturbation_type"] = "CRISPR KO"
    methods_p = {
        "control": {},
        "mean": {},
        "cell_mean": {},
        "linear": {},
        "pca_probe (no foundation model)": pca_probe,
        **fm_methods(args, gf_small, measured_targets=True),
    }
    res_p = fm.tl.benchmark_perturbation(
        pap,
        perturbation_key="target",
        control="non-targeting",
        methods=methods_p,
        split="random",
        seeds=seeds,
        split_options={"test_fraction": 0.5, "unmeasured": "train"},
    )
    wall = time.perf_counter() - t_start

    lines = [
        "# Perturbation predictors with their random-weight controls (5 seeds)",
        "",
        f"Produced by `python benchmarks/perturbation_fm_table.py --out {args.out} --seeds {args.seeds} "
        f"--cells-per-condition {args.cells_per_condition} --epochs {args.epochs}` in {wall:.0f} s. "
        "No pretrained weights were available: every foundation-model row is a random-weight control. mean ± sd "
        "over (seed, condition) rows; the last row is fit + predict seconds per seed (mean ± sd over seeds).",
        "",
    ]
    frames = []
    for title, res in (
        ("Norman 2019 CRISPRa, split double, test + holdout conditions", res_n),
        ("Papalexi 2021 knock-outs, unseen targets (half held out)", res_p),
    ):
        n_cond = res[res["method"] == "mean"].groupby("seed")["condition"].nunique()
        lines += [f"## {title}", "", f"Scored conditions per seed: {', '.join(map(str, n_cond.tolist()))}.", ""]
        table = summary(res).T
        head = [m for m in HEADLINE if m in table.columns] + ["fit + predict seconds per seed"]
        lines += ["Headline metrics:", "", table[head].to_markdown(), "", "Every metric:", "", table.to_markdown(), ""]
        frames.append(res.assign(dataset=title.split(",")[0]))
    (args.out / "perturbation_fm_table.md").write_text("\n".join(lines))
    if args.csv:
        pd.concat(frames).to_csv(args.out / "perturbation_fm_scores.csv", index=False)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
