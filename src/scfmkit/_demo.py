"""``nox -s demo``: the main job on real data, with a short report.

1. Geneformer cell embeddings of scanpy's bundled ``pbmc68k_reduced`` (the best Geneformer available: a local or
   cached checkpoint, else the random-weight control with the real dictionaries, said plainly) beside PCA and a
   random floor; written to ``pbmc68k_embeddings.h5ad``.
2. The embedding benchmark: scib-metrics scores of random, PCA and Geneformer on the 3-batch PBMC set.
3. The perturbation baseline table on Norman 2019: control, mean, additive and linear, 3 seeds.

Writes ``report.md`` and ``report.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

import scfmkit as fm

log = logging.getLogger("scfmkit.demo")


def _geneformer(adata, lines: list[str]) -> str | None:
    """Embed with the best Geneformer available; returns the obsm key or None."""
    try:
        model = fm.models.load("geneformer-v1")
        lines.append(f"- Geneformer V1 with pretrained weights from `{model.source}` ({model.weights_id[:19]}...).")
    except (OSError, FileNotFoundError) as err:
        log.info("No pretrained Geneformer: %s", err)
        try:
            model = fm.models.load("geneformer-v1", weights="random")
        except (OSError, FileNotFoundError) as err2:
            lines.append(f"- Geneformer skipped: neither weights nor dictionaries could be found ({err2}).")
            return None
        lines.append(
            "- **No pretrained Geneformer weights were found**, so this is the *random-weight control* (same "
            f"architecture, real dictionaries from `{model.source}`). Its scores show what the architecture and "
            "tokenisation give without pretraining. Put the released weights in `$SCFMKIT_MODELS_DIR/geneformer-v1/` "
            "to score the real model."
        )
    fm.tl.embed(adata, model, input="lognorm", batch_size=16)
    return "X_geneformer"


def main(argv: list[str] | None = None) -> None:
    """Run the demo."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lines = ["# scfmkit demo report", ""]

    # 1. embeddings of pbmc68k_reduced
    lines += ["## 1. Cell embeddings: pbmc68k_reduced (700 cells, scanpy's bundled data)", ""]
    pbmc = fm.datasets.pbmc68k_reduced()
    adata = pbmc.raw.to_adata()
    adata.obs = pbmc.obs.copy()
    key = _geneformer(adata, lines)
    fm.tl.baselines(adata, methods=("random", "pca"), n_comps=50, rng=0)
    adata.write_h5ad(args.out / "pbmc68k_embeddings.h5ad")
    lines.append(f"- Wrote `{args.out / 'pbmc68k_embeddings.h5ad'}` with obsm keys {sorted(adata.obsm)}.")
    lines.append("")

    # 2. embedding benchmark on three PBMC batches
    lines += ["## 2. Embedding benchmark: 3-batch PBMC (scib-metrics, batch = donor, labels = cell_type)", ""]
    scores = None
    try:
        pb = fm.datasets.pbmc_3batch()
    except (OSError, FileNotFoundError) as err:
        lines.append(f"Skipped: {err}")
    else:
        embs = []
        if key is not None:
            _geneformer(pb, [])
            embs.append("X_geneformer")
        # the random floor and the unintegrated PCA are added by fm.metrics.integration itself
        res = fm.metrics.integration(pb, embs, batch_key="donor", label_key="cell_type", rng=0)
        scores = res[res["metric"].isin(["Bio conservation", "Batch correction", "Total"])].pivot_table(
            index="embedding", columns="metric", values="value"
        )
        lines += [_md(scores.round(3)), "", "Random (floor) and PCA are the rows every embedding must beat.", ""]

    # 3. perturbation baselines on Norman 2019
    lines += ["## 3. Perturbation prediction: Norman 2019 doubles whose singles are measured, split `double`", ""]
    table = None
    try:
        norman = fm.datasets.norman2019()
    except (OSError, FileNotFoundError) as err:
        lines.append(f"Skipped: {err}")
    else:
        cells = norman[norman.obs["dataset"] == "norman19"]
        conds = cells.obs["condition"].astype(str)
        singles = {c for c in conds.unique() if "+" not in c and c != "control"}
        doubles = [c for c in conds.unique() if "+" in c and set(c.split("+")) <= singles]
        cells = cells[conds.isin(["control", *singles, *doubles]).to_numpy()].copy()
        pb = fm.pp.pseudobulk_perturbations(cells, perturbation_key="condition", control="control")
        methods = {
            "control": {},
            "mean": {},
            "additive": {},
            "linear": {"method": "linear", "perturbation_embedding": "training"},
        }
        bench = fm.tl.benchmark_perturbation(
            pb, methods=methods, split="double", seeds=range(args.seeds), evaluate=("test", "holdout")
        )
        table = bench.groupby(["method", "metric"])["value"].mean().unstack("metric")
        cols = [c for c in ("pearson_delta", "l2_top1000", "mse_de", "pearson_delta_de", "direction_de") if c in table]
        lines += [_md(table[cols or list(table.columns[:4])].round(3)), ""]
        lines.append(
            f"Mean over conditions and {args.seeds} seeds. `control` is the floor; `additive`/`linear` the bar."
        )
        lines.append("")

    _figure(scores, table, args.out / "report.png")
    lines += [f"![report]({'report.png'})", "", f"Total time: {time.perf_counter() - t0:.0f} s."]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _md(df: pd.DataFrame) -> str:
    """A DataFrame as a markdown table (no extra dependency)."""
    head = [str(df.index.name or ""), *map(str, df.columns)]
    rows = [
        [str(i), *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r)]
        for i, r in zip(df.index, df.values, strict=True)
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def _figure(scores: pd.DataFrame | None, table: pd.DataFrame | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if scores is not None:
        scores.plot.barh(ax=axes[0])
        axes[0].set_title("Embedding benchmark (scib-metrics)")
        axes[0].set_xlim(0, 1)
    if table is not None and "pearson_delta" in table:
        table["pearson_delta"].sort_values().plot.barh(ax=axes[1], color="grey")
        axes[1].set_title("Perturbation: Pearson delta (higher is better)")
    for ax in axes:
        if not ax.has_data():
            ax.text(0.5, 0.5, "skipped", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
