"""Runs the reference scBERT forward (TencentAILabHealthcare/scBERT) for bench_scbert.py, in its own environment.

Usage: ``$SCFMKIT_REFERENCE_PYTHON _scbert_reference.py --checkout DIR --h5ad FILE --ckpt DIR --out FILE.npy``.
Imports ``performer_pytorch`` from ``--checkout`` only; prints one JSON line with the timings.

Preprocessing follows ``preprocess.py`` (its column-by-column copy onto the gene list, looked up with a dict instead
of its quadratic list scan; ``normalize_total(1e4)``, ``log1p(base=2)``) and is not timed. The timed part is
``predict.py``'s loop: one cell at a time, bins capped at ``bin_num``, a trailing 0, ``model(seq,
return_encodings=True)`` in ``eval()`` under ``torch.no_grad()``; the mean over the gene positions is saved.
The reference reads gene2vec from ``../data/gene2vec_16906.npy``; the runner works in a folder where that path is the
checkpoint's file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkout", type=Path, required=True)
    p.add_argument("--h5ad", type=Path, required=True)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    a = p.parse_args()

    import anndata as ad
    import numpy as np
    import scanpy as sc
    import torch
    from scipy import sparse

    run = a.out.parent / "reference_run" / "cwd"
    (run.parent / "data").mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    link = run.parent / "data" / "gene2vec_16906.npy"
    if not link.exists():
        link.symlink_to((a.ckpt / "gene2vec_16906.npy").resolve())
    os.chdir(run)
    sys.path.insert(0, str(a.checkout))
    from performer_pytorch import PerformerLM

    t0 = time.perf_counter()
    ref = [line.strip() for line in (a.ckpt / "gene_list.txt").read_text().splitlines() if line.strip()]
    data = ad.read_h5ad(a.h5ad)
    first: dict[str, int] = {}
    for j, g in enumerate(data.var_names):
        first.setdefault(g, j)
    X = data.X.tocsc()
    counts = sparse.lil_matrix((data.n_obs, len(ref)), dtype=np.float32)
    for i, g in enumerate(ref):
        if g in first:
            counts[:, i] = X[:, first[g]].toarray()
    new = ad.AnnData(X=counts.tocsr())
    sc.pp.normalize_total(new, target_sum=1e4)
    sc.pp.log1p(new, base=2)
    t1 = time.perf_counter()

    state = torch.load(a.ckpt / "panglao_pretrain.pth", weights_only=True)["model_state_dict"]
    n_class = state["token_emb.weight"].shape[0]
    dim_head = state["performer.net.layers.0.0.fn.fast_attention.projection_matrix"].shape[1]
    nb_features = state["performer.net.layers.0.0.fn.fast_attention.projection_matrix"].shape[0]
    ff_mult = state["performer.net.layers.0.1.fn.fn.w1.weight"].shape[0] // 200
    model = PerformerLM(
        num_tokens=n_class,
        dim=200,
        depth=a.depth,
        max_seq_len=len(ref) + 1,
        heads=a.heads,
        dim_head=dim_head,
        nb_features=nb_features,
        ff_mult=ff_mult,
        local_attn_heads=0,
        g2v_position_emb=True,
    )
    model.load_state_dict(state)
    model.eval()
    t2 = time.perf_counter()
    out = []
    with torch.no_grad():
        for index in range(new.n_obs):
            full_seq = new.X[index].toarray()[0]
            full_seq[full_seq > (n_class - 2)] = n_class - 2
            full_seq = torch.from_numpy(full_seq).long()
            full_seq = torch.cat((full_seq, torch.tensor([0]))).unsqueeze(0)
            enc = model(full_seq, return_encodings=True)
            out.append(enc[0, :-1].mean(0).numpy())
    t3 = time.perf_counter()
    np.save(a.out, np.stack(out))
    print(
        json.dumps(
            {
                "preprocess_seconds": t1 - t0,
                "load_seconds": t2 - t1,
                "embed_seconds": t3 - t2,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
