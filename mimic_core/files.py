"""Reading weight files safely: pickles without executing code, safetensors by memory map."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import ModelFileError


def require_file(path: str | Path, what: str, fix: str) -> Path:
    """Return ``path`` as a Path if it is a readable file; else raise naming ``what`` and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} not found at '{path}'. {fix}")
    return path


def load_torch_pickle(path: str | Path) -> object:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never code.

    Zip-format files (what ``torch.save`` writes since torch 1.6) are memory-mapped, so a
    multi-gigabyte checkpoint is not copied into memory before its tensors are used.
    """
    path = Path(path)
    try:
        mmap = zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise ModelFileError(
            f"'{path}' holds pickled objects other than tensors and plain containers, so it was "
            "refused without running any of it. Use the original file from the model's download "
            f"page, or a .safetensors conversion of it. (torch said: {str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise ModelFileError(
            f"'{path}' could not be read as a torch checkpoint ({str(err).splitlines()[0]}). "
            "The file is probably truncated or corrupt: download it again."
        ) from err


def open_safetensors(path: str | Path):
    """Open a ``.safetensors`` file lazily (memory-mapped), with a clear error when it is broken."""
    path = Path(path)
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(
            f"'{path}' is not a readable .safetensors file ({err}). "
            "The file is probably truncated or corrupt: download or convert it again."
        ) from err


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a ``.safetensors`` file, and its string metadata."""
    handle = open_safetensors(path)
    try:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelFileError(
            f"'{path}' is damaged: a tensor could not be read ({err}). Download or convert it again."
        ) from err
    return tensors, dict(handle.metadata() or {})


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat state dict from ``.safetensors`` or a torch pickle (``.bin``, ``.pth``, ``.pt``, ``.ckpt``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)[0]
    loaded = load_torch_pickle(path)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ModelFileError(f"'{path}' does not hold a flat dict of tensors (a state dict).")
    return loaded


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``, with an error that names the file when it is not one."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFileError(f"'{path}' is not a readable JSON file ({err}).") from err
    if not isinstance(value, dict):
        raise ModelFileError(f"'{path}' should hold a JSON object.")
    return value
