"""Run the REFERENCE Geneformer (a checkout outside this repository) for bench_geneformer.py.

Usage (with the reference's own Python environment):

    $SCFMKIT_REFERENCE_PYTHON benchmarks/_geneformer_reference.py tokenize --checkout DIR --h5ad F --dicts D
    $SCFMKIT_REFERENCE_PYTHON benchmarks/_geneformer_reference.py embed --checkout DIR --h5ad F --dicts D --ckpt C

Prints one JSON line: the timed seconds (and a checksum of the tokens / the embeddings in input order).
Only ``geneformer/tokenizer.py`` and ``geneformer/emb_extractor.py`` are imported from the checkout. Shims that do not
touch the numerics let the reference run on this stack: ``anndata.read`` (removed in anndata 0.12) aliased to
``read_h5ad``, the CUDA devices it hard-codes sent to the CPU, ``torch.cpu.empty_cache`` (absent in recent torch) made
a no-op, and a stub ``peft`` while importing (V2 imports it; unused for embeddings).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _to_cpu(dev):
    import torch

    if isinstance(dev, str) and dev.startswith("cuda"):
        return "cpu"
    if isinstance(dev, torch.device) and dev.type == "cuda":
        return torch.device("cpu")
    return dev


def _shims() -> None:
    import anndata
    import torch

    if not hasattr(anndata, "read"):
        anndata.read = anndata.read_h5ad
    for cls in (torch.Tensor, torch.nn.Module):
        original = cls.to

        def to(self, *a, _original=original, **k):
            a = tuple(_to_cpu(x) for x in a)
            if "device" in k:
                k["device"] = _to_cpu(k["device"])
            return _original(self, *a, **k)

        cls.to = to
    if not hasattr(torch.cpu, "empty_cache"):
        torch.cpu.empty_cache = lambda: None


class _CpuTorch(types.ModuleType):
    """``torch`` as the reference modules see it: ``torch.tensor(..., device="cuda")`` lands on the CPU."""

    def __getattr__(self, name):
        import torch

        return getattr(torch, name)

    @staticmethod
    def tensor(*a, **k):
        import torch

        if "device" in k:
            k["device"] = _to_cpu(k["device"])
        return torch.tensor(*a, **k)


def load_reference(checkout: Path):
    _shims()
    pkg_dir = checkout / "geneformer"
    pkg = types.ModuleType("geneformer")
    pkg.__path__ = [str(pkg_dir)]
    for attr, fname in {
        "GENE_MEDIAN_FILE": "gene_median_dictionary_gc95M.pkl",
        "TOKEN_DICTIONARY_FILE": "token_dictionary_gc95M.pkl",
        "ENSEMBL_DICTIONARY_FILE": "gene_name_id_dict_gc95M.pkl",
        "ENSEMBL_MAPPING_FILE": "ensembl_mapping_dict_gc95M.pkl",
    }.items():
        setattr(pkg, attr, pkg_dir / fname)
    sys.modules["geneformer"] = pkg
    stub = importlib.util.find_spec("peft") is None
    if stub:
        peft = types.ModuleType("peft")
        peft.LoraConfig, peft.get_peft_model = object, (lambda *a, **k: None)
        sys.modules["peft"] = peft
    try:
        tok = importlib.import_module("geneformer.tokenizer")
        importlib.import_module("geneformer.emb_extractor")
    finally:
        if stub:
            del sys.modules["peft"]
    for name, mod in list(sys.modules.items()):
        if name.startswith("geneformer.") and getattr(mod, "torch", None) is not None:
            mod.torch = _CpuTorch("torch")
    return tok


def _dict(dicts: Path, prefix: str) -> Path:
    return sorted(dicts.glob(f"{prefix}*.pkl"))[0]


def prepare(h5ad: Path, dicts: Path, out_dir: Path) -> int:
    """Write the reference's input: Ensembl ids in var['ensembl_id'], float32 obs['n_counts'], obs['cell_index']."""
    import anndata as ad
    from scipy import sparse

    from scfmkit.models import safe_load_pickle

    adata = ad.read_h5ad(h5ad)
    name_id = safe_load_pickle(_dict(dicts, "gene_name_id_dict"))
    X = sparse.csr_matrix(adata.X)
    ids = [name_id.get(g) for g in adata.var_names]
    keep = [i for i, g in enumerate(ids) if g is not None]
    out = ad.AnnData(X[:, keep])
    out.var_names = [ids[i] for i in keep]
    out.var["ensembl_id"] = [ids[i] for i in keep]
    out.obs_names = list(adata.obs_names)
    out.obs["n_counts"] = np.asarray(X.sum(axis=1)).ravel()
    out.obs["cell_index"] = np.arange(adata.n_obs)
    out_dir.mkdir(parents=True, exist_ok=True)
    out.write_h5ad(out_dir / "cells.h5ad")
    return adata.n_obs


def tokenizer(tokmod, dicts: Path):
    """The reference tokenizer for these dictionaries; ``None`` when this reference has no V2 (special tokens)."""
    special = "<cls>" in _load_tokens(dicts)
    kw = {
        "gene_median_file": _dict(dicts, "gene_median_dictionary"),
        "token_dictionary_file": _dict(dicts, "token_dictionary"),
    }
    cls = tokmod.TranscriptomeTokenizer
    if "special_token" in inspect.signature(cls.__init__).parameters:  # the current reference (V1 and V2)
        # its h5ad path needs collapse_gene_ids=True; V1's mapping file (gc30M) maps every V1 gene to itself
        kw |= {"model_input_size": 4096 if special else 2048, "special_token": special, "collapse_gene_ids": True}
        kw["gene_mapping_file"] = _dict(dicts, "ensembl_mapping_dict")
    elif special:  # the old reference knows V1 only
        return None
    return cls({"cell_index": "cell_index"}, nproc=1, **kw)


def _load_tokens(dicts: Path) -> dict:
    from scfmkit.models import safe_load_pickle

    return safe_load_pickle(_dict(dicts, "token_dictionary"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["tokenize", "embed"])
    p.add_argument("--checkout", type=Path, required=True)
    p.add_argument("--h5ad", type=Path, required=True)
    p.add_argument("--dicts", type=Path, required=True)
    p.add_argument("--ckpt", type=Path)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--emb-mode", default="cell", choices=["cell", "cls"])
    args = p.parse_args()
    tokmod = load_reference(args.checkout)
    work = Path(tempfile.mkdtemp(prefix="gf_ref_"))
    try:
        n = prepare(args.h5ad, args.dicts, work / "in")
        tk = tokenizer(tokmod, args.dicts)
        if tk is None:
            print(json.dumps({"skipped": "this reference has no Geneformer V2 tokenizer (special tokens)"}))
            return
        t = time.perf_counter()
        tk.tokenize_data(work / "in", work / "tok", "cells", file_format="h5ad")
        tok_seconds = time.perf_counter() - t
        from datasets import load_from_disk

        ds = load_from_disk(str(work / "tok" / "cells.dataset"))
        if args.command == "tokenize":
            checksum = int(sum(int(np.sum(ids)) for ids in ds["input_ids"]))
            print(json.dumps({"seconds": tok_seconds, "n_cells": n, "checksum": checksum}))
            return
        emb_mod = sys.modules["geneformer.emb_extractor"]
        ex = emb_mod.EmbExtractor(
            model_type="Pretrained",
            emb_mode=args.emb_mode,
            max_ncells=None,
            emb_layer=-1,
            emb_label=["cell_index"],
            forward_batch_size=args.batch_size,
            nproc=1,
            token_dictionary_file=str(_dict(args.dicts, "token_dictionary")),
        )
        t = time.perf_counter()
        df = ex.extract_embs(str(args.ckpt), str(work / "tok" / "cells.dataset"), str(work), "emb")
        seconds = time.perf_counter() - t
        df = df.sort_values("cell_index")
        emb = df.drop(columns=["cell_index"]).to_numpy(np.float32)
        print(json.dumps({"seconds": seconds, "n_cells": n, "embeddings": emb.tolist()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
