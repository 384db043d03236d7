"""Safe loading of files that come from outside: dictionaries (pickles), weights, checksums, hub downloads."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

__all__ = ["UnsafeFileError", "load_state_dict", "safe_load_pickle", "sha256_file"]


class UnsafeFileError(pickle.UnpicklingError):
    """Raised when a pickle asks for anything beyond plain containers, strings and numbers."""


# numpy scalars appear in some released Geneformer dictionaries (e.g. float64 medians); these are the only
# globals a dictionary may reference, and each is checked to rebuild only a scalar.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol 2 stores a scalar's bytes as latin-1 text
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            import numpy as np

            return {"scalar": _np_scalar, "dtype": np.dtype, "encode": _latin1_encode}[name]
        msg = (
            f"Refusing to unpickle {module}.{name}: dictionary files may only hold plain containers, strings and "
            "numbers. This file may be malicious or not a model dictionary; re-download it from the model's source."
        )
        raise UnsafeFileError(msg)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in {"latin1", "latin-1"}:
        msg = "Refusing to unpickle a call to _codecs.encode other than latin-1 text to bytes."
        raise UnsafeFileError(msg)
    return text.encode("latin-1")


def _np_scalar(dtype: Any, data: bytes | None = None) -> Any:
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf" or dtype.hasobject:
        msg = f"Refusing to unpickle a numpy scalar of dtype {dtype}; only numeric scalars are allowed."
        raise UnsafeFileError(msg)
    if isinstance(data, str):  # protocol-2 pickles store the bytes as latin-1 text
        data = data.encode("latin-1")
    return np.frombuffer(data, dtype=dtype)[0].item()


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle that may contain only builtin containers, str, int, float, bool, None and numpy scalars.

    Numpy scalars are returned as Python numbers. Anything else raises :class:`UnsafeFileError`.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafeFileError:
        raise
    except Exception as err:  # not a pickle, truncated, or another format: many different errors
        msg = (
            f"{path} is not a readable Python pickle ({type(err).__name__}: {err}). Dictionary files must be the "
            "released .pkl files; download or copy them again."
        )
        raise ValueError(msg) from err


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a weights file safely: safetensors, else ``torch.load(weights_only=True)``."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError, OSError, ...: name the file and the fix
            msg = (
                f"Could not read the weights {str(path)!r} ({type(err).__name__}: {err}). The file is probably "
                "truncated or corrupt; download it again."
            )
            raise ValueError(msg) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = (
            f"{path.name} could not be loaded with `weights_only=True` (it holds more than tensors). scfmkit does not "
            "run arbitrary pickled code; convert it to safetensors or a plain state dict."
        )
        raise UnsafeFileError(msg) from err
    except Exception as err:  # truncated zip archives and other damage
        msg = (
            f"Could not read the weights {str(path)!r} ({type(err).__name__}: {err}). The file is probably "
            "truncated or corrupt; download it again."
        )
        raise ValueError(msg) from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model_state_dict" in obj and isinstance(obj["model_state_dict"], dict):
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict):
        msg = f"{path.name} does not hold a state dict (got {type(obj).__name__})."
        raise ValueError(msg)
    return obj


def find_weights(directory: Path, names: tuple[str, ...], *, where: str) -> Path:
    """The first of ``names`` present in ``directory`` (a model's weights file), or an error that says the fix.

    ``where`` tells the user where the released weights come from.
    """
    for fname in names:
        if (Path(directory) / fname).is_file():
            return Path(directory) / fname
    msg = (
        f"No weights in {str(directory)!r}: expected one of {list(names)}. {where} Or pass `weights='random'` for the "
        "foundationless control with the same architecture and vocabulary."
    )
    raise FileNotFoundError(msg)


def check_finite(state: dict[str, Any], *, source: object) -> None:
    """Refuse weights holding NaN or infinite values (corrupted bytes behind an intact header), naming the file."""
    import torch

    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        msg = (
            f"The weights in {source} hold NaN or infinite values in {len(bad)} tensors (e.g. {bad[0]}); the file is "
            "corrupted. Download it again."
        )
        raise ValueError(msg)


def hub_download(
    repo_id: str, *, subfolder: str | None, filenames: list[str], optional: list[str] = (), name: str
) -> Path:
    """Download files of a hub repository into the scfmkit cache and return their local folder.

    Offline or failing downloads raise an error that explains how to use a local directory instead.
    """
    from .._settings import settings

    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover
        msg = "huggingface_hub is needed to download models; `pip install huggingface_hub` or pass a local directory."
        raise ImportError(msg) from err
    cache = Path(settings.cache_dir) / "hub"
    local = None
    for fname in [*filenames, *optional]:
        try:
            p = hf_hub_download(repo_id, fname, subfolder=subfolder, cache_dir=cache)
        except Exception as err:
            if fname in optional:
                continue
            where = f"{repo_id}/{subfolder}" if subfolder else repo_id
            msg = (
                f"Could not get {fname!r} of model {name!r} from the hub ({where}): {type(err).__name__}: {err}. "
                f"If this machine is offline, download the folder elsewhere and pass it as `model='/path/to/dir'`, "
                f"or put it at $SCFMKIT_MODELS_DIR/{name}/."
            )
            raise OSError(msg) from err
        local = Path(p).parent
    assert local is not None
    return local
