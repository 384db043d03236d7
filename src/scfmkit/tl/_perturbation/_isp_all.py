"""Geneformer's "all genes" in-silico deletion: every expressed gene of each cell deleted on its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from scfmkit._utils import progress

from ._isp_compare import Pair, compare_pairs


def delete_each_gene(
    fm_model: Any,
    tokens: Sequence[np.ndarray],
    cell_names: Sequence[str],
    *,
    emb_layer: int,
    pooling: str,
    comparison: str,
    batch_size: int,
    device: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Delete each gene of each cell alone (the reference's ``genes_to_perturb="all"``, ``perturb_type="delete"``).

    Returns the long table (``cell``, ``gene_id``, ``token``, ``cos``: the cell value of that deletion, as in
    :func:`~scfmkit.tl._perturbation._isp_compare.compare_pairs`) and its summary per deleted gene (``mean_cos``,
    ``n_cells``), indexed by gene id.
    """
    skip = 1 if fm_model.vocab.special_tokens else 0
    inv = {int(t): str(g) for g, t in fm_model.vocab.token_dict.items()}
    frames = []
    for name, cell in progress(list(zip(cell_names, tokens, strict=True)), desc="cells", unit="cell"):
        cell = np.asarray(cell, dtype=np.int64)
        positions = np.arange(skip, len(cell) - skip)
        pairs, genes = [], []
        if len(positions) > 1:  # by position, as the reference (a repeated token is deleted once per entry)
            for q in positions.tolist():
                pert = np.delete(cell, q)
                pairs.append(Pair(pert, cell, np.arange(skip, len(pert) - skip), positions[positions != q]))
                genes.append(int(cell[q]))
        if not pairs:
            continue
        res = compare_pairs(
            fm_model,
            pairs,
            emb_layer=emb_layer,
            pooling=pooling,
            comparison=comparison,
            batch_size=batch_size,
            device=device,
        )
        frames.append(pd.DataFrame({"cell": str(name), "token": np.asarray(genes, np.int64), "cos": res["cos"]}))
    long = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({"cell": pd.Series([], dtype=str), "token": np.zeros(0, np.int64), "cos": np.zeros(0)})
    )
    long.insert(1, "gene_id", [inv.get(int(t), str(t)) for t in long["token"]])
    summary = long.groupby("gene_id", sort=True).agg(
        token=("token", "first"), mean_cos=("cos", "mean"), n_cells=("cos", "size")
    )
    return long, summary
