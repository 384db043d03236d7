"""Gene dependency maps: source genes per second, and the scaling with the number of genes and of cells.

Tiny seeded random-weight checkpoints in the released layouts (real vocabularies; sizes set by the options) map
real cells of the Papalexi 2021 screen (raw counts, 299 genes). Each measurement is one ``fm.tl.gene_dependency``
call without the baselines that re-run the model (``baselines=("coexpression",)``), timed after a warm-up call:

- ``sources``: source genes per second at ``--n-cells`` cells and all genes, Geneformer (embedding score; and the
  MLM log-odds score, which adds a softmax over the vocabulary at every compared gene) and scGPT (both scores);
- ``genes``: the same map on the most expressed 50 / 100 / 299 genes (longer cells, more targets);
- ``cells``: 50 / 100 / 200 / 400 cells.

Run: ``python benchmarks/bench_dependency.py --out out/bench`` (``--quick`` for smaller sizes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import SHARED, Recorder


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for the JSON-lines results")
    p.add_argument("--quick", action="store_true", help="fewer cells and sizes (smoke run)")
    p.add_argument("--n-cells", type=int, default=200)
    p.add_argument("--n-sources", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("SCFMKIT_DATA_DIR", str(SHARED / "data"))
    os.environ.setdefault("SCFMKIT_PROGRESS", "0")
    import anndata as ad

    import scfmkit as fm

    rec = Recorder(args.out, "dependency")
    tmp = Path(tempfile.mkdtemp())
    h, layers = args.hidden, args.layers
    gf_dir = fm.models.get_spec("geneformer-v1").write_random(
        tmp / "gf",
        SHARED / "models" / "geneformer-v1",
        seed=0,
        num_hidden_layers=layers,
        hidden_size=h,
        num_attention_heads=4,
        intermediate_size=2 * h,
    )
    sg_dir = fm.models.get_spec("scgpt-human").write_random(
        tmp / "sg", SHARED / "models" / "scgpt-human", seed=0, nlayers=layers, embsize=h, nhead=4, d_hid=2 * h
    )
    models = {
        "geneformer": fm.models.load(str(gf_dir), weights="random", seed=0),
        "scgpt": fm.models.load(str(sg_dir), weights="random", seed=0),
    }
    full = ad.read_h5ad(SHARED / "data" / "papalexi2021_eccite_lowmoi.h5ad")
    rng = np.random.default_rng(0)
    n_cells = 60 if args.quick else args.n_cells
    order = np.argsort(-np.asarray(full.X.sum(0)).ravel(), kind="stable")

    def cells(n: int, n_genes: int | None = None):
        a = full[np.sort(rng.choice(full.n_obs, n, replace=False))]
        if n_genes is not None:
            a = a[:, np.sort(order[:n_genes])]
        a = a.copy()
        return a[np.asarray((a.X > 0).sum(1)).ravel() > 0].copy()

    def timed(name: str, a, *, scores, n_sources: int) -> dict:
        kw = {"n_genes": n_sources, "scores": scores, "baselines": ("coexpression",), "batch_size": args.batch_size}
        fm.tl.gene_dependency(a[:8].copy(), models[name], **(kw | {"n_genes": 1}))  # warm-up
        t0 = time.perf_counter()
        b = a.copy()
        fm.tl.gene_dependency(b, models[name], **kw)
        dt = time.perf_counter() - t0
        p = b.uns[f"{name}_dependency"]["params"]
        lengths = np.asarray((b.X > 0).sum(1)).ravel()
        return {
            "model": name,
            "scores": list(scores),
            "n_cells": int(b.n_obs),
            "n_genes": int(b.n_vars),
            "mean_genes_per_cell": float(lengths.mean()),
            "n_sources": n_sources,
            "seconds": dt,
            "sources_per_s": n_sources / dt,
            "n_forward": int(p["n_forward"]),
        }

    base = cells(n_cells)
    ns = 2 if args.quick else args.n_sources
    for name, scores in (
        ("geneformer", ("embedding",)),
        ("geneformer", ("logodds",)),
        ("scgpt", ("expression", "embedding")),
    ):
        rec.record("sources", layers=layers, hidden=h, **timed(name, base, scores=scores, n_sources=ns))
    for n_genes in (50, 100) if args.quick else (50, 100, 299):
        for name, scores in (("geneformer", ("embedding",)), ("scgpt", ("expression", "embedding"))):
            rec.record("genes", **timed(name, cells(n_cells, n_genes), scores=scores, n_sources=ns))
    for n in (30, 60) if args.quick else (50, 100, 200, 400):
        for name, scores in (("geneformer", ("embedding",)), ("scgpt", ("expression", "embedding"))):
            rec.record("cells", **timed(name, cells(n), scores=scores, n_sources=ns))


if __name__ == "__main__":
    main()
