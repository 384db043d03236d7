from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SMALL_GF = {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "seed": 0}


@pytest.fixture(scope="session")
def gf_small_dir(shared_dir, tmp_path_factory) -> Path:
    """A tiny random-weight Geneformer V1 with the real dictionaries and 64 positions (cells keep their top 64 genes),
    so that fine-tuning tests take seconds."""
    from scfmkit.models.geneformer import write_random_checkpoint

    src = shared_dir / "models" / "geneformer-v1"
    vocab = tmp_path_factory.mktemp("gf_small_vocab")
    for p in src.iterdir():
        shutil.copyfile(p, vocab / p.name)
    config = json.loads((src / "config.json").read_text())
    config["max_position_embeddings"] = 64
    (vocab / "config.json").write_text(json.dumps(config))
    return write_random_checkpoint(tmp_path_factory.mktemp("gf_small") / "v1", vocab, **SMALL_GF)


@pytest.fixture(scope="session")
def scgpt_small_dir(shared_dir, tmp_path_factory) -> Path:
    from scfmkit.models.scgpt import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("scgpt_small") / "m",
        shared_dir / "models" / "scgpt-human",
        nlayers=2,
        embsize=16,
        nhead=2,
        d_hid=32,
    )


@pytest.fixture(scope="session")
def pbmc_split(shared_dir):
    """~60 training cells (3pv1 + 3pv2) and ~30 query cells (5p) of the 3-batch PBMC set (log-normalised)."""
    import anndata as ad
    import numpy as np

    a = ad.read_h5ad(shared_dir / "data" / "pbmc_3batch_symphony.h5ad")
    rng = np.random.default_rng(0)
    train = a[a.obs["donor"].isin(["3pv1", "3pv2"]).to_numpy()]
    train = train[np.sort(rng.choice(train.n_obs, 60, replace=False))].copy()
    counts = train.obs["cell_type_broad"].map(train.obs["cell_type_broad"].value_counts()).to_numpy()
    train = train[counts >= 3].copy()  # no label with one or two cells (refused by default; tested apart)
    query = a[((a.obs["donor"] == "5p") & a.obs["cell_type_broad"].isin(set(train.obs["cell_type_broad"]))).to_numpy()]
    query = query[np.sort(rng.choice(query.n_obs, 30, replace=False))].copy()
    return train, query


SHARP_GF = {"num_hidden_layers": 3, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "seed": 0}
SHARP_SCALE = {"attention.self.query.weight": 6.0, "attention.self.key.weight": 6.0, "intermediate.dense.weight": 4.0}
#: SHARP_SCALE with the attention value/output weights x20 too: V2 ``<cls>`` cosines of one deletion ~1 - 2e-4
#: (SHARP_SCALE alone leaves them 1 to float precision, where a ``<cls>`` comparison cannot fail a test)
SHARPER_SCALE = {**SHARP_SCALE, "attention.self.value.weight": 20.0, "attention.output.dense.weight": 20.0}


def write_sharp_checkpoint(
    out_dir, dictionaries_dir, *, max_position_embeddings: int = 1024, scale: dict[str, float] | None = None
) -> Path:
    """A tiny random Geneformer whose attention and feed-forward weights are scaled up (``scale``, by default
    ``SHARP_SCALE``), so that
    perturbing a gene moves the other genes' embeddings visibly (plain random small weights give cosines ~1 to float
    precision, where a wrong comparison cannot fail a test); ``max_position_embeddings`` positions."""
    from safetensors.torch import load_file, save_file

    from scfmkit.models.geneformer import write_random_checkpoint

    src, out_dir = Path(dictionaries_dir), Path(out_dir)
    vocab = out_dir.parent / f"{out_dir.name}_vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and not p.name.endswith((".safetensors", ".bin")):
            shutil.copyfile(p, vocab / p.name)
    config = json.loads((src / "config.json").read_text())
    config["max_position_embeddings"] = max_position_embeddings
    (vocab / "config.json").write_text(json.dumps(config))
    path = write_random_checkpoint(out_dir, vocab, **SHARP_GF)
    sd = load_file(str(path / "model.safetensors"))
    for k in sd:
        for suffix, factor in (SHARP_SCALE if scale is None else scale).items():
            if k.endswith(suffix):
                sd[k] = sd[k] * factor
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="session")
def gf_sharp_dirs(shared_dir, tmp_path_factory) -> dict[str, Path]:
    """``write_sharp_checkpoint`` with the V1 and V2 dictionaries (1024 positions): the ISP parity checkpoints."""
    base = tmp_path_factory.mktemp("gf_sharp")
    return {
        "v1": write_sharp_checkpoint(base / "v1", shared_dir / "models" / "geneformer-v1"),
        "v2": write_sharp_checkpoint(base / "v2", shared_dir / "models" / "geneformer-v2-gc95M"),
    }


@pytest.fixture(scope="session")
def gf_sharper_v2_dir(shared_dir, tmp_path_factory) -> Path:
    """``write_sharp_checkpoint(scale=SHARPER_SCALE)`` with the V2 dictionaries: V2 ``<cls>`` parity checkpoint."""
    base = tmp_path_factory.mktemp("gf_sharper")
    return write_sharp_checkpoint(base / "v2s", shared_dir / "models" / "geneformer-v2-gc95M", scale=SHARPER_SCALE)
