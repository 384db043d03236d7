"""``fm.metrics.integration`` with and without the compile-once scib-metrics kernels, on the notebook's data.

The ``integration_benchmark`` notebook's scoring cell (7 embeddings of ``pbmc_3batch``, exact neighbours, 3
half-sample resamples), each variant in a fresh process; prints the wall time of each and the largest absolute
difference of every number (values, interval ends, standard errors, replicates). The foundation-model embeddings
(random-weight controls) are read from the notebook's cache (``<SCFMKIT_CACHE_DIR>/notebooks``; run the notebook
once first); the baselines are recomputed as in the notebook.

    python benchmarks/_integration_fast_check.py --out /tmp/integ_check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EMBEDDINGS = ["X_scVI", "X_harmony", "X_pca", "X_geneformer", "X_scgpt", "X_scbert", "X_random"]
CACHED = {
    "X_geneformer": "pbmc_3batch_geneformer-v1_random_input-lognorm.npz",
    "X_scgpt": "pbmc_3batch_scgpt-human_random_.npz",
    "X_scbert": "pbmc_3batch_scbert-tiny_random_input-lognorm.npz",
}


def prepare(path: Path) -> None:
    import torch
    from scipy import sparse

    import scfmkit as fm

    torch.set_num_threads(1)
    adata = fm.datasets.pbmc_3batch()
    X = sparse.csr_matrix(adata.X, dtype=np.float64)
    counts = sparse.diags(adata.obs["nUMI"].to_numpy(dtype=np.float64) / 1e4) @ X.expm1()
    counts.data = np.round(counts.data)
    adata.layers["counts"] = counts.astype(np.float32).tocsr()
    fm.tl.baselines(
        adata, ("random", "pca", "harmony", "scvi"), batch_key="donor", counts_layer="counts", max_epochs=100, rng=0
    )
    cache = fm.settings.cache_dir / "notebooks"
    for key, name in CACHED.items():
        z = np.load(cache / name, allow_pickle=False)
        assert (z["obs_names"] == adata.obs_names.to_numpy(dtype=str)).all()
        adata.obsm[key] = z["emb"]
    del adata.uns["baselines"]
    adata.write_h5ad(path)


def child(h5ad: Path, out: Path, fast: bool) -> None:
    import anndata as ad
    import pandas as pd

    import scfmkit as fm
    import scfmkit.metrics._integration as integ

    fm.settings.progress = False
    if not fast:
        integ.fast_scib = contextlib.nullcontext
    adata = ad.read_h5ad(h5ad)
    t = time.perf_counter()
    res = fm.metrics.integration(
        adata, EMBEDDINGS, batch_key="donor", label_key="cell_type", baselines=(), neighbors="exact", n_boot=3, rng=0
    )
    wall = time.perf_counter() - t
    pd.DataFrame(res.attrs.pop("replicates")).to_csv(out.with_name(out.name + "_replicates.csv"), index=False)
    res.to_csv(out.with_name(out.name + ".csv"), index=False)
    print(json.dumps({"wall_s": wall}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/integration_fast_check"))
    p.add_argument("--child", choices=["fast", "original"], help=argparse.SUPPRESS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    h5ad = args.out / "pbmc_3batch_embeddings.h5ad"
    if args.child:
        child(h5ad, args.out / args.child, args.child == "fast")
        return
    if not h5ad.exists():
        prepare(h5ad)
    walls = {}
    for mode in ("original", "fast"):
        cmd = [sys.executable, __file__, "--out", str(args.out), "--child", mode]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        walls[mode] = json.loads(res.stdout.strip().splitlines()[-1])["wall_s"]
    import pandas as pd

    diffs = {}
    for what, cols in (("", ["value", "ci_low", "ci_high", "se"]), ("_replicates", ["value", "deviation"])):
        a, b = (pd.read_csv(args.out / f"{mode}{what}.csv") for mode in ("original", "fast"))
        keys = [c for c in a.columns if c not in cols]
        assert a[keys].equals(b[keys]), "rows differ"
        diffs.update({f"max_abs_diff{what}_{c}": float((a[c] - b[c]).abs().max()) for c in cols})
    print(json.dumps({"wall_s": walls, "time_ratio_original_over_fast": walls["original"] / walls["fast"], **diffs}))


if __name__ == "__main__":
    main()
