"""Reading and writing Geneformer checkpoints in the released layout: dictionaries, config, weights, the hub.

No forward code: :mod:`scfmkit.models.geneformer` builds the model from what this module reads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ._io import find_weights, hub_download, load_state_dict, safe_load_pickle, sha256_file

__all__ = ["GeneformerVocab", "detect_variant", "read_checkpoint", "write_random_checkpoint"]

DICT_PREFIXES = {
    "token_dict": "token_dictionary",
    "medians": "gene_median_dictionary",
    "name_to_id": "gene_name_id_dict",
    "id_mapping": "ensembl_mapping_dict",
}


def find_dict(directory: Path, prefix: str) -> Path | None:
    hits = sorted(directory.glob(f"{prefix}*.pkl"))
    if len(hits) > 1:
        msg = f"Found several {prefix}*.pkl files in {directory}: {[h.name for h in hits]}; keep one."
        raise ValueError(msg)
    return hits[0] if hits else None


@dataclass
class GeneformerVocab:
    """The dictionaries of a Geneformer release.

    Attributes
    ----------
    token_dict
        Ensembl id (and special tokens such as ``<pad>``, ``<cls>``) -> token id.
    medians
        Ensembl id -> non-zero median of the gene's normalised expression in the pretraining corpus.
    name_to_id
        Gene symbol -> Ensembl id (optional).
    id_mapping
        Ensembl id -> collapsed Ensembl id (V2; optional). Duplicates after mapping are summed.

    A model keeps tables derived from these dictionaries (the last gene match, the median of every token). They are
    rebuilt when a dictionary is replaced or changes size, so change a vocabulary by assigning a new dictionary
    (``model.vocab = dataclasses.replace(model.vocab, medians=new)``), not by editing one in place.
    """

    token_dict: dict[str, int]
    medians: dict[str, float]
    name_to_id: dict[str, str] | None = None
    id_mapping: dict[str, str] | None = None
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, directory: str | Path) -> GeneformerVocab:
        """Read the dictionaries of ``directory`` through the restricted unpickler."""
        directory = Path(directory)
        found = {attr: find_dict(directory, prefix) for attr, prefix in DICT_PREFIXES.items()}
        for attr in ("token_dict", "medians"):
            if found[attr] is None:
                msg = (
                    f"{directory} has no {DICT_PREFIXES[attr]}*.pkl; a Geneformer folder needs config.json, "
                    "token_dictionary*.pkl and gene_median_dictionary*.pkl."
                )
                raise FileNotFoundError(msg)
        loaded = {attr: (safe_load_pickle(p) if p is not None else None) for attr, p in found.items()}
        for attr, value in loaded.items():
            if value is not None and not isinstance(value, dict):
                msg = f"{found[attr].name} should hold a dict, got {type(value).__name__}."
                raise ValueError(msg)
        token_dict = {str(k): int(v) for k, v in loaded["token_dict"].items()}
        medians = {str(k): float(v) for k, v in loaded["medians"].items()}
        return cls(
            token_dict=token_dict,
            medians=medians,
            name_to_id=loaded["name_to_id"],
            id_mapping=loaded["id_mapping"],
            files={attr: p.name for attr, p in found.items() if p is not None},
        )

    @property
    def special_tokens(self) -> bool:
        """Whether the vocabulary has ``<cls>`` and ``<eos>`` (Geneformer V2)."""
        return "<cls>" in self.token_dict and "<eos>" in self.token_dict

    @property
    def pad_id(self) -> int:
        """Token id of ``<pad>``."""
        return self.token_dict.get("<pad>", 0)


def detect_variant(directory: str | Path) -> str:
    """Registry name of the Geneformer in ``directory``, from its dictionaries (``<cls>``/``<eos>`` => V2)."""
    directory = Path(directory)
    tok = find_dict(directory, "token_dictionary")
    if tok is None:
        msg = f"{directory} has no token_dictionary*.pkl; cannot tell the Geneformer variant."
        raise FileNotFoundError(msg)
    vocab = safe_load_pickle(tok)
    return "geneformer-v2" if ("<cls>" in vocab and "<eos>" in vocab) else "geneformer-v1"


@dataclass(frozen=True)
class _HubLayout:
    repo: str
    weights_subfolder: str
    dictionaries: tuple[str, ...]


_HUB = {
    "geneformer-v1": _HubLayout(
        "ctheodoris/Geneformer",
        "Geneformer-V1-10M",
        (
            "geneformer/gene_dictionaries_30m/token_dictionary_gc30M.pkl",
            "geneformer/gene_dictionaries_30m/gene_median_dictionary_gc30M.pkl",
            "geneformer/gene_dictionaries_30m/gene_name_id_dict_gc30M.pkl",
            "geneformer/gene_dictionaries_30m/ensembl_mapping_dict_gc30M.pkl",
        ),
    ),
    "geneformer-v2": _HubLayout(
        "ctheodoris/Geneformer",
        "gf-12L-95M-i4096",
        (
            "geneformer/token_dictionary_gc95M.pkl",
            "geneformer/gene_median_dictionary_gc95M.pkl",
            "geneformer/gene_name_id_dict_gc95M.pkl",
            "geneformer/ensembl_mapping_dict_gc95M.pkl",
        ),
    ),
}


def _from_hub(name: str, *, weights: str) -> Path:
    """Assemble a local folder in the released layout from hub files (cached under settings.cache_dir)."""
    from .._settings import settings

    layout = _HUB[name]
    target = Path(settings.cache_dir) / "models" / name
    target.mkdir(parents=True, exist_ok=True)
    files = ["config.json"] + (["model.safetensors"] if weights == "pretrained" else [])
    wdir = hub_download(layout.repo, subfolder=layout.weights_subfolder, filenames=files, name=name)
    for f in files:
        if not (target / f).exists():
            shutil.copyfile(wdir / f, target / f)
    for path in layout.dictionaries:
        sub, fname = path.rsplit("/", 1)
        ddir = hub_download(layout.repo, subfolder=sub, filenames=[fname], name=name)
        if not (target / fname).exists():
            shutil.copyfile(ddir / fname, target / fname)
    return target


def read_checkpoint(directory: Path | None, *, weights: str, seed: int, name: str | None):
    """``(config, vocab, state_dict, weights_id, directory)`` of a Geneformer folder (or the hub, or random weights)."""
    from .._utils import logger

    if directory is None:
        if name is None:
            msg = "No Geneformer directory given."
            raise ValueError(msg)
        directory = _from_hub(name, weights=weights)
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        msg = f"{directory} has no config.json; a Geneformer folder holds config.json, weights and dictionaries."
        raise FileNotFoundError(msg)
    try:
        config = json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as err:
        msg = f"{directory / 'config.json'} is not valid JSON ({err}); restore the file from the release."
        raise ValueError(msg) from err
    vocab = GeneformerVocab.from_dir(directory)
    detected = "geneformer-v2" if vocab.special_tokens else "geneformer-v1"
    if name is not None and name != detected:
        logger.warning(
            "%s was asked for but the dictionaries in %s are %s's; using %s.", name, directory, detected, detected
        )
    from ._bert_config import BertConfig, LazyRandomStateDict

    bert_config = BertConfig.from_dict(config)
    if weights == "random":
        state_dict = LazyRandomStateDict(bert_config, seed)  # drawn when first used (not to tokenise)
        weights_id = f"random:{seed}"
    else:
        wfile = find_weights(
            directory,
            ("model.safetensors", "pytorch_model.bin"),
            where="Put the released Geneformer weights there (HuggingFace ctheodoris/Geneformer).",
        )
        state_dict = load_state_dict(wfile)
        from ._bert import check_state_dict

        check_state_dict(state_dict, bert_config, source=wfile)
        weights_id = f"sha256:{sha256_file(wfile)}"
    return config, vocab, state_dict, weights_id, directory, detected


def write_random_checkpoint(
    out_dir: str | Path,
    dictionaries_dir: str | Path,
    *,
    seed: int = 0,
    num_hidden_layers: int | None = None,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
) -> Path:
    """Write a seeded random-weight ``BertForMaskedLM`` in the released Geneformer folder layout.

    ``out_dir`` receives ``config.json`` (the one in ``dictionaries_dir`` with the given sizes overridden),
    ``model.safetensors`` (every ``BertForMaskedLM`` weight, MLM head included, HuggingFace names) and copies of the
    dictionaries. Used by the tests and to make small stand-in checkpoints with the real vocabularies.
    """
    from safetensors.torch import save_file

    from ._bert import BertConfig, random_hf_state_dict

    out_dir, src = Path(out_dir), Path(dictionaries_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    overrides = {
        "num_hidden_layers": num_hidden_layers,
        "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads,
        "intermediate_size": intermediate_size,
    }
    config.update({k: v for k, v in overrides.items() if v is not None})
    sd = random_hf_state_dict(BertConfig.from_dict(config), seed)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    for prefix in DICT_PREFIXES.values():
        p = find_dict(src, prefix)
        if p is not None:
            shutil.copyfile(p, out_dir / p.name)
    return out_dir
