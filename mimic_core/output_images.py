"""Where a command writes its pictures: checked before the work, and never lost after it.

An edit takes seconds to hours, so everything about an output path that can be known in advance
(a format Pillow writes, not a folder, not an input, not an existing file unless the user said
so, a folder that exists or can be made) is checked before any model loads. What can still go
wrong at the end (a full disk, a folder removed meanwhile) does not throw the result away: it is
written to the system's temporary folder instead, and the error says where.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError

logger = logging.getLogger(__name__)

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
           ".bmp": "BMP"}
"""The file name endings an edit can be written as, and Pillow's name for each format."""


def writable_formats() -> dict[str, str]:
    """:data:`FORMATS` less any this Pillow was built without (WebP is optional)."""
    Image.init()
    return {suffix: name for suffix, name in FORMATS.items() if name in Image.SAVE}


def check_output_path(path: Path, inputs: list[Path], overwrite: bool, option: str = "--out") -> str:
    """Pillow's format name for ``path``; :class:`InputError` naming the problem if it cannot be written."""
    formats = writable_formats()
    endings = ", ".join(formats)
    if path.is_dir():
        raise InputError(f"{option} '{path}' is a folder; give a file name in it, e.g. {path / 'edited.png'}.")
    if path.suffix.lower() not in formats:
        raise InputError(f"{option} '{path}' does not end in an image format this can write ({endings}); "
                         f"name it e.g. {path.with_suffix('.png').name}.")
    if path.resolve() in {source.resolve() for source in inputs}:
        raise InputError(f"{option} '{path}' is one of the input images; choose another name.")
    if path.exists() and not overwrite:
        raise InputError(f"'{path}' exists; choose another {option} or pass --overwrite.")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{option} '{path}' cannot be made: '{folder}' is a file, not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} '{path}' cannot be written: no permission to write in '{folder}'. Choose a "
                         "folder of your own.")
    return formats[path.suffix.lower()]


def _save(image: np.ndarray, path: Path, image_format: str) -> None:
    """Write whole or not at all: into a hidden file beside, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        Image.fromarray(image).save(partial, format=image_format)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _rescue(image: np.ndarray, path: Path) -> Path:
    """A safe copy of an image that could not be written to ``path``: a PNG in the temporary folder."""
    handle, name = tempfile.mkstemp(prefix=f"mimicbrush-{path.stem}-", suffix=".png")
    os.close(handle)
    Image.fromarray(image).save(name, format="PNG")
    return Path(name)


def write_images(images: list[np.ndarray], paths: list[Path], image_format: str) -> None:
    """Write ``H x W x 3`` uint8 images; if any write fails, that image is kept in the temporary folder
    and :class:`InputError` (raised once all are written) says why and where it is."""
    failures = []
    for image, path in zip(images, paths):
        try:
            _save(image, path, image_format)
        except (OSError, ValueError) as err:
            failures.append(f"could not write '{path}' ({err}); the result is saved as '{_rescue(image, path)}'")
    if failures:
        raise InputError("; ".join(failures) + ". Move it where you want it, or free space / fix the folder's "
                         "permissions and run again.")
