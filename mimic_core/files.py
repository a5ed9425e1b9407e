"""Reading weight files safely: pickles without executing code, safetensors by memory map."""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import pickle
import sys
import weakref
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import ModelFileError


def require_file(path: str | Path, what: str, fix: str) -> Path:
    """Return ``path`` as a Path if it is a readable file; else raise naming ``what`` and ``fix``."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{what} should be a file, but '{path}' is a folder: give the file in it. {fix}")
    if not path.is_file():
        raise ModelFileError(f"{what} not found at '{path}'. {fix}")
    return path


def refuse_text_in_place_of_model(path: str | Path) -> None:
    """Refuse a model file that is really text, the usual failed download: a Git LFS pointer (what a
    clone without LFS holds in place of each large file) or a web page saved under the model's name.
    Reads the first kilobyte only; a binary file (any control byte there) passes."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if head.startswith(b"version https://git-lfs"):
        raise ModelFileError(f"'{path}' is a Git LFS pointer ({path.stat().st_size} bytes of text that stand for the "
                             "real file), not the model: fetch the file itself ('git lfs pull' in the clone, or "
                             "download it from the model's page).")
    if not head or any(byte < 9 or 13 < byte < 32 for byte in head):
        return
    if b"<html" in head.lower() or b"<!doctype" in head.lower():
        raise ModelFileError(f"'{path}' is a web page (an error or sign-in page saved in place of the download?), "
                             "not a model file: download it again.")
    raise ModelFileError(f"'{path}' is a text file, not a model file: download it again.")


def load_torch_pickle(path: str | Path) -> object:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never code.

    Zip-format files (what ``torch.save`` writes since torch 1.6) are memory-mapped, so a
    multi-gigabyte checkpoint is not copied into memory before its tensors are used; their
    tensors' pages can be given back as a ``.safetensors`` file's are (:func:`release_mapped_pages`:
    torch maps the file private, copy-on-write, as :func:`load_safetensors` does).
    """
    path = Path(path)
    try:
        refuse_text_in_place_of_model(path)
        mmap = zipfile.is_zipfile(path)
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        if mmap:
            _register_mapped_storages(loaded)
        return loaded
    except pickle.UnpicklingError as err:
        raise ModelFileError(
            f"'{path}' holds pickled objects other than tensors and plain containers, so it was "
            "refused without running any of it. Use the original file from the model's download "
            f"page, or a .safetensors conversion of it.{_what_torch_refused(err)}"
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as err:
        raise ModelFileError(
            f"'{path}' could not be read as a torch checkpoint ({str(err).splitlines()[0]}). "
            "The file is probably truncated or corrupt: download it again."
        ) from err


def _what_torch_refused(err: Exception) -> str:
    """What torch's refusal says it met, its unpickler's first sentence (not its advice to load
    without ``weights_only``)."""
    prefix = "WeightsUnpickler error: "
    named = [line.strip()[len(prefix):] for line in str(err).splitlines() if line.strip().startswith(prefix)]
    return f" (torch met: {named[0].split('. ')[0]})" if named else ""


def open_safetensors(path: str | Path):
    """Open a ``.safetensors`` file lazily (memory-mapped), with a clear error when it is broken."""
    path = Path(path)
    try:
        refuse_text_in_place_of_model(path)
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(
            f"'{path}' is not a readable .safetensors file ({err}). "
            "The file is probably truncated or corrupt: download or convert it again."
        ) from err


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _damaged(path: Path, why: str) -> ModelFileError:
    return ModelFileError(f"'{path}' is not a readable .safetensors file ({why}). "
                          "The file is probably truncated or corrupt: download or convert it again.")


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a ``.safetensors`` file, memory-mapped without copies, and its string metadata.

    The tensors are views of one private (copy-on-write) mapping of the file: nothing is read
    until a weight is used, the page cache is the only copy, and writing to a tensor never
    touches the file. A tensor whose offset does not suit its dtype's alignment is copied.
    """
    path = Path(path)
    try:
        refuse_text_in_place_of_model(path)
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_size > min(size - 8, 100_000_000):
                raise _damaged(path, "its header is cut off")
            header = json.loads(handle.read(header_size))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _damaged(path, f"unreadable header: {err}") from err
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_size
    try:
        end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
        if data_start + end > size:
            raise _damaged(path, f"it holds {size} bytes, its header describes {data_start + end}")
        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
        _MAPPED_STORAGES[storage.data_ptr()] = storage
        tensors = {}
        for name, entry in header.items():
            dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
            if dtype is None:
                raise ModelFileError(f"'{path}' holds '{name}' of dtype {entry.get('dtype')}, which is not supported.")
            begin, finish = (data_start + int(offset) for offset in entry["data_offsets"])
            raw = torch.empty(0, dtype=torch.uint8).set_(storage, begin, (finish - begin,))
            if begin % raw.new_empty(0, dtype=dtype).element_size():
                raw = raw.clone()
            tensors[name] = raw.view(dtype).reshape(entry["shape"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as err:
        raise _damaged(path, f"malformed header: {err}") from err
    return tensors, {str(k): str(v) for k, v in metadata.items()}


_MAPPED_STORAGES: weakref.WeakValueDictionary[int, torch.UntypedStorage] = weakref.WeakValueDictionary()
"""The file mappings :func:`load_safetensors` made, and the storages of the tensors that
:func:`load_torch_pickle` mapped, that are still alive, by address."""


def _register_mapped_storages(loaded: object) -> None:
    """Record the storage of every tensor in a memory-mapped ``torch.load`` result (dicts and lists
    of them, as checkpoints hold), each a slice of torch's private mapping of the file."""
    if isinstance(loaded, torch.Tensor):
        storage = loaded.untyped_storage()
        if storage.device.type == "cpu" and storage.nbytes():
            _MAPPED_STORAGES[storage.data_ptr()] = storage
    elif isinstance(loaded, dict):
        for value in loaded.values():
            _register_mapped_storages(value)
    elif isinstance(loaded, (list, tuple)):
        for value in loaded:
            _register_mapped_storages(value)


def release_mapped_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Give back the resident memory of weights memory-mapped by :func:`load_safetensors`.

    The tensors stay valid: their pages are dropped from this process (``madvise(MADV_DONTNEED)``)
    and the next read maps them in again from the page cache or the file. This is how a model
    that is done with its work (the image encoder after the reference is encoded) stops counting
    against memory on the CPU, where there is nowhere to offload it to. Only whole pages inside
    tensors that still view one of those mappings are released; a tensor that was copied, cast
    or moved is not file-backed and is left alone. Returns the bytes released (0 where the
    platform has no ``madvise``).

    Call it only for weights nothing has written to: the mapping is copy-on-write, and a written
    page would go back to the file's content.
    """
    if not sys.platform.startswith("linux"):
        return 0
    page = mmap.PAGESIZE
    released = 0
    for tensor in tensors:
        if tensor.device.type != "cpu" or not tensor.numel():
            continue
        storage = tensor.untyped_storage()
        if _MAPPED_STORAGES.get(storage.data_ptr()) is not storage:
            continue
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        first, last = -(-start // page) * page, end // page * page
        if last > first and _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED) == 0:
            released += last - first
    return released


@contextlib.contextmanager
def mapped_pages_released_as_used(module: torch.nn.Module):
    """While inside, give back each layer's memory-mapped weights as soon as that layer has run, and
    at the end every weight of ``module`` (:func:`release_mapped_pages`).

    A network run once through, as an image encoder or depth model is per edit, then holds about one
    layer's weights at a time instead of all of them. Given back only at its end, the SD-1.5-size
    image encoder's 2.5 GB were resident together with the U-Nets' weights in every edit after the
    first (whose U-Nets are paged in later), which made that edit's peak 10.6 GiB against 9.0 for
    the first. Reading the pages back from the page cache costs little: all 6.4 GiB of the U-Nets'
    mapped weights were touched in 0.2 s.
    """
    def release_own_weights(layer: torch.nn.Module, args, output) -> None:  # None: the output stays as it is
        release_mapped_pages(layer.parameters(recurse=False))

    hooks = [layer.register_forward_hook(release_own_weights)
             for layer in module.modules() if next(layer.parameters(recurse=False), None) is not None]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        release_mapped_pages(module.parameters())


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


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


def new_file_mode() -> int:
    """The permissions a file created now gets by default (0o666 less the umask): writers that create
    their file private (safetensors' ``save_file`` makes it 0o600) are given these, so that a model
    written here is readable where the user's other files are (a ComfyUI run by another user, a
    container). The umask is read from ``/proc`` where it can be, not set and restored, which other
    threads would see."""
    try:
        status = Path("/proc/self/status").read_text()
        umask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


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
