"""scBERT checkpoint files: the gene list, gene2vec, the weights; and seeded random checkpoints in that layout.

A checkpoint folder holds

- ``panglao_pretrain.pth``: ``torch.save({"model_state_dict": ...})`` of the reference ``PerformerLM`` (read with
  ``torch.load(weights_only=True)``; other entries such as the optimiser state are ignored);
- the model's gene list, in order: ``gene_list.txt`` (one symbol a line) or the reference's ``panglao_10000.h5ad``
  (its ``var_names``; only the names are read);
- ``gene2vec_16906.npy``: the gene2vec matrix (genes x 200) of the positional embedding (needed for
  ``weights="random"``; with pretrained weights the checkpoint's own copy is used and this file is checked against
  the gene count).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._utils import logger

if TYPE_CHECKING:
    import torch

    from ._performer import PerformerConfig

__all__ = [
    "GENE2VEC_FILE",
    "GENE_LIST_FILES",
    "WEIGHTS_FILE",
    "find_gene_list",
    "is_scbert_dir",
    "read_gene2vec",
    "read_gene_list",
    "read_weights",
    "stand_in_gene_list",
    "write_random_checkpoint",
]

WEIGHTS_FILE = "panglao_pretrain.pth"
GENE2VEC_FILE = "gene2vec_16906.npy"
GENE_LIST_FILES = ("gene_list.txt", "panglao_10000.h5ad")


def is_scbert_dir(names: set[str]) -> bool:
    """Whether a folder with these file names looks like an scBERT checkpoint."""
    return GENE2VEC_FILE in names or (WEIGHTS_FILE in names and any(f in names for f in GENE_LIST_FILES))


def find_gene_list(directory: Path) -> Path:
    for fname in GENE_LIST_FILES:
        if (directory / fname).is_file():
            return directory / fname
    msg = (
        f"{str(directory)!r} has no scBERT gene list: expected {' or '.join(GENE_LIST_FILES)} (the var_names of the "
        "reference's panglao_10000.h5ad, in order) beside panglao_pretrain.pth and gene2vec_16906.npy."
    )
    raise FileNotFoundError(msg)


def read_gene_list(path: Path) -> list[str]:
    """The model's genes in order, from a text file (one a line) or an ``.h5ad``'s ``var_names``."""
    path = Path(path)
    if path.suffix == ".h5ad":
        import h5py

        with h5py.File(path, "r") as f:
            var = f["var"]
            index_key = var.attrs.get("_index", "_index")
            names = var[index_key][:]
        genes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    else:
        genes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not genes:
        msg = f"The gene list {str(path)!r} is empty."
        raise ValueError(msg)
    return genes


def read_gene2vec(path: Path) -> np.ndarray:
    """The gene2vec matrix (genes x dim), read without pickles."""
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as err:
        msg = f"{str(path)!r} is not a plain numeric .npy array ({err}); scfmkit does not load pickled arrays."
        raise ValueError(msg) from err
    if arr.ndim != 2 or arr.dtype.kind != "f":
        msg = f"{str(path)!r} should hold a float genes x dim matrix, got {arr.dtype} {arr.shape}."
        raise ValueError(msg)
    return arr


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The ``model_state_dict`` of a ``panglao_pretrain.pth`` (``torch.load(weights_only=True)``)."""
    from ._io import UnsafeFileError, check_finite, load_state_dict

    try:
        state = load_state_dict(path)
    except UnsafeFileError:
        raise
    except Exception as err:  # truncated or corrupt files raise many different errors
        msg = (
            f"Could not read the scBERT weights {str(path)!r} ({type(err).__name__}: {err}). The file is probably "
            "truncated or corrupt; download it again."
        )
        raise ValueError(msg) from err
    if any(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    check_finite(state, source=repr(str(path)))
    dropped = [k for k in state if k.startswith("to_out.") and k not in ("to_out.weight", "to_out.bias")]
    if dropped:
        logger.info("scBERT: %d tensors of a fine-tuning head were skipped.", len(dropped))
        state = {k: v for k, v in state.items() if k not in dropped}
    return state


def stand_in_gene_list(n: int = 16_906, *, seed: int = 0, csv_path: str | Path | None = None) -> list[str]:
    """A seeded stand-in for scBERT's 16,906 PanglaoDB symbols (the real list is not on this machine).

    ``n`` gene-like symbols of GENCODE v44 (``gencode_v44_gene_id2name.csv`` in ``csv_path`` or
    :attr:`scfmkit.settings.data_dir`; symbols of letters and digits, none of the ``ENSG``/``LINC``/``MIR``/``SNOR``/
    ``RNU``/``RNA5``/``Y_RNA``/``LOC`` families), drawn without replacement with ``seed`` and kept in file order.
    """
    import re

    import pandas as pd

    from .._settings import settings

    if csv_path is None:
        if settings.data_dir is None:
            msg = "Set SCFMKIT_DATA_DIR (or pass `csv_path=`) to the folder with gencode_v44_gene_id2name.csv."
            raise FileNotFoundError(msg)
        csv_path = Path(settings.data_dir) / "gencode_v44_gene_id2name.csv"
    sym = pd.unique(pd.read_csv(csv_path, header=None)[1].astype(str))
    pattern = re.compile(r"^[A-Z][A-Z0-9]*$")
    skip = ("ENSG", "LINC", "MIR", "SNOR", "RNU", "RNA5", "Y_RNA", "LOC")
    keep = [s for s in sym if pattern.match(s) and not s.startswith(skip)]
    if n > len(keep):
        msg = f"Only {len(keep)} gene-like symbols in {csv_path}; ask for at most that many genes."
        raise ValueError(msg)
    idx = np.sort(np.random.default_rng(seed).choice(len(keep), n, replace=False))
    return [keep[i] for i in idx]


def write_random_checkpoint(
    out_dir: str | Path,
    vocab_dir: str | Path | None = None,
    *,
    genes: list[str] | None = None,
    n_genes: int = 16_906,
    gene2vec: np.ndarray | None = None,
    seed: int = 0,
    depth: int = 6,
    heads: int = 10,
    dim_head: int = 64,
    nb_features: int | None = None,
    ff_mult: int = 4,
    bin_num: int = 5,
    dim: int = 200,
) -> Path:
    """Write a seeded random scBERT checkpoint in the released layout (for tests, demos and benchmarks).

    ``out_dir`` receives ``panglao_pretrain.pth`` (``{"model_state_dict": ...}`` with the reference's keys),
    ``gene_list.txt`` and ``gene2vec_16906.npy``. The genes are ``genes``, else the gene list of ``vocab_dir`` (a
    folder with the real ``gene_list.txt`` or ``panglao_10000.h5ad``, whose ``gene2vec_16906.npy`` is used too),
    else :func:`stand_in_gene_list` of ``n_genes`` genes; gene2vec is ``gene2vec`` or a seeded Gaussian matrix genes
    x ``dim``. The released model has 16,906 genes, ``dim=200`` (gene2vec's width), 6 layers of 10 heads of 64, the
    default 266 random features, a 4x feed-forward and 5 bins; smaller ``depth``/``heads``/``dim_head``/
    ``nb_features``/``ff_mult`` (all arguments of the reference ``PerformerLM``) make fast test checkpoints.

    Returns
    -------
    ``out_dir`` as a :class:`~pathlib.Path`.
    """
    import torch

    from ._performer import PerformerConfig, random_state_dict

    out_dir = Path(out_dir)
    if genes is None and vocab_dir is not None and Path(vocab_dir).is_dir():
        try:
            genes = read_gene_list(find_gene_list(Path(vocab_dir)))
        except FileNotFoundError:
            genes = None
        else:
            if gene2vec is None and (Path(vocab_dir) / GENE2VEC_FILE).is_file():
                gene2vec = read_gene2vec(Path(vocab_dir) / GENE2VEC_FILE)
    if genes is None:
        genes = stand_in_gene_list(n_genes, seed=0)
    genes = list(genes)
    if len(set(genes)) != len(genes):
        msg = "The gene list has repeated names; scBERT's genes are unique."
        raise ValueError(msg)
    if gene2vec is None:
        gene2vec = np.random.default_rng(seed).standard_normal((len(genes), dim)).astype(np.float32)
    gene2vec = np.asarray(gene2vec)
    cfg = PerformerConfig(
        num_tokens=bin_num + 2,
        max_seq_len=len(genes) + 1,
        dim=gene2vec.shape[1],
        depth=depth,
        heads=heads,
        dim_head=dim_head,
        nb_features=nb_features,
        ff_mult=ff_mult,
    )
    state = random_state_dict(cfg, gene2vec, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": state}, out_dir / WEIGHTS_FILE)
    (out_dir / "gene_list.txt").write_text("\n".join(genes) + "\n")
    np.save(out_dir / GENE2VEC_FILE, gene2vec)
    return out_dir


def random_config(genes: list[str], gene2vec: np.ndarray, **sizes: Any) -> PerformerConfig:
    """The released architecture (6 layers, 10 heads of 64, 5 bins) on this gene list, for ``weights="random"``."""
    from ._performer import PerformerConfig

    return PerformerConfig(max_seq_len=len(genes) + 1, dim=int(gene2vec.shape[1]), **sizes)
