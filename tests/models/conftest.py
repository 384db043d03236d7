from __future__ import annotations

from pathlib import Path

import pytest

TINY = {"num_hidden_layers": 3, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "seed": 0}


@pytest.fixture(scope="session")
def gf_v1_dir(shared_dir, tmp_path_factory) -> Path:
    """A tiny random-weight Geneformer V1 checkpoint in the released layout, with the real V1 dictionaries."""
    from scfmkit.models.geneformer import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("gf") / "v1", shared_dir / "models" / "geneformer-v1", **TINY
    )


@pytest.fixture(scope="session")
def gf_v2_dir(shared_dir, tmp_path_factory) -> Path:
    """As ``gf_v1_dir`` with the real V2 (gc95M) dictionaries."""
    from scfmkit.models.geneformer import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("gf") / "v2", shared_dir / "models" / "geneformer-v2-gc95M", **TINY
    )


@pytest.fixture(scope="session")
def celltypist(shared_dir):
    import anndata as ad

    return ad.read_h5ad(shared_dir / "data" / "celltypist_sample_counts_559cells.h5ad")
