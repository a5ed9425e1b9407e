"""Reading image files: one way for every command (edit, evaluate, train) and the nodes' examples.

A file is read as ComfyUI's Load Image and an image viewer show it: EXIF orientation applied,
the first frame of an animation, and the full range of deep files scaled to 0..1 (16-bit
greyscale PNGs open in Pillow as ``I;16`` or ``I``, whose values ``Image.convert`` clips at 255,
so such a picture came out almost white). Eight-bit files go through Pillow's own conversions,
exactly as before, so results made from them do not change by a bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

DEEP_GREY_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}
"""Greyscale modes with more than 8 bits, and the value that stands for white: Pillow opens a
16-bit PNG or TIFF as one of these (``I`` included, as ComfyUI's Load Image also assumes)."""
ORIENTATION_TAG = 0x0112
TURNED_ORIENTATIONS = {5, 6, 7, 8}
"""EXIF orientations that show the stored picture turned a quarter, so width and height swap."""
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _open(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.seek(0)
            upright = ImageOps.exif_transpose(image)
            upright.load()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from err
    if upright.width < 1 or upright.height < 1:
        raise InputError(f"The image '{path}' is empty ({upright.width}x{upright.height}).")
    return upright


def _unreadable(path: str | Path, err: Exception) -> InputError:
    """The error for an image file Pillow could not open, named by why: too large, a folder, not a
    picture it knows, or damaged."""
    if isinstance(err, Image.DecompressionBombError):
        return InputError(f"The image '{path}' is too large to open ({err}): scale it down first.")
    if isinstance(err, IsADirectoryError):
        return InputError(f"'{path}' is a folder, not an image: give an image file.")
    if isinstance(err, FileNotFoundError):
        return InputError(f"The image '{path}' does not exist: check the path.")
    if isinstance(err, PermissionError):
        return InputError(f"The image '{path}' cannot be read: this user lacks the permission to read it.")
    if isinstance(err, UnidentifiedImageError):
        return InputError(f"Cannot read the image '{path}': {err}. Give a picture this can open (a PNG, JPEG, WebP, "
                          "TIFF or BMP of 8 or 16 bits, or a greyscale float TIFF); save others as PNG.")
    return InputError(f"Cannot read the image '{path}': {err}. The file may be damaged: save it again as a PNG.")


def _deep_grey(image: Image.Image) -> np.ndarray | None:
    """A deep greyscale or float image as ``H x W`` float32 in 0..1; None for 8-bit modes."""
    if image.mode in DEEP_GREY_MODES:
        values = np.asarray(image).astype(np.float32) / DEEP_GREY_MODES[image.mode]
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        values = values / 255.0 if np.nanmax(values) > 1.0 else values  # 0..255 floats, or already 0..1
    else:
        return None
    return np.clip(np.nan_to_num(values), 0.0, 1.0)


def _pixels(image: Image.Image, mode: str) -> np.ndarray:
    deep = _deep_grey(image)
    if deep is not None:
        return np.repeat(deep[..., None], 3, axis=2) if mode == "RGB" else deep
    return np.asarray(image.convert(mode), dtype=np.float32) / 255.0


def _alpha(image: Image.Image) -> np.ndarray | None:
    if image.mode not in ALPHA_MODES and not (image.mode in {"P", "L", "RGB"} and "transparency" in image.info):
        return None
    return np.asarray(image.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0


def read_image_array(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """An image file as ``H x W x 3`` (``mode`` "RGB") or ``H x W`` ("L", luminance) float32 in 0..1.
    Alpha is dropped, as Pillow's ``convert`` drops it; :func:`read_alpha` gives it."""
    return _pixels(_open(path), mode)


def read_alpha(path: str | Path) -> np.ndarray | None:
    """The file's alpha channel as ``H x W`` float32 in 0..1 (palette transparency included), or None."""
    return _alpha(_open(path))


def read_image(path: str | Path, mode: str) -> torch.Tensor:
    """An image file as a ComfyUI-style ``[1, H, W, C]`` float tensor in 0..1 (``mode`` "RGB" or "L")."""
    array = read_image_array(path, mode)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor[None, ..., None] if mode == "L" else tensor[None]


def read_mask(path: str | Path) -> torch.Tensor:
    """A mask file as ``[1, H, W]`` float in 0..1, 1 = edit: its luminance (white = edit, as the
    command line documents; a colour file counts by its brightness), times its alpha where it has
    one, so strokes painted on a transparent layer are the mask and the transparent rest is not,
    whatever colour its hidden pixels hold. (ComfyUI's Load Image reads a *picture's* alpha the
    other way round, MASK = 1 - alpha: there the transparent part is the hole to fill.)"""
    image = _open(path)
    mask, alpha = _pixels(image, "L"), _alpha(image)
    return torch.from_numpy(np.ascontiguousarray(mask if alpha is None else mask * alpha))[None]


def read_transparency_mask(path: str | Path) -> torch.Tensor:
    """The mask painted into a picture as ComfyUI's mask editor saves it, ``[1, H, W]`` float in 0..1:
    1 - alpha, the transparent part being the region to edit (ComfyUI's Load Image reads it so)."""
    alpha = read_alpha(path)
    if alpha is None or alpha.min() >= 1.0:
        raise InputError(f"'{path}' has no transparent part to read a mask from: give --mask (a grey picture, white "
                         "= edit), or paint the region in ComfyUI's mask editor, which saves it transparent.")
    if alpha.min() >= 0.5:
        raise InputError(f"'{path}' is nowhere more than half transparent (its most transparent pixel has alpha "
                         f"{round(alpha.min() * 255)} of 255), so no region to edit can be read from it: erase the "
                         "region fully, or give --mask (a grey picture, white = edit).")
    return torch.from_numpy(np.ascontiguousarray(1.0 - alpha))[None]


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as it is shown (EXIF orientation applied), from its header alone."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(ORIENTATION_TAG, 1) in TURNED_ORIENTATIONS
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from err
    return (height, width) if turned else (width, height)


def read_rgb_uint8(path: str | Path) -> np.ndarray:
    """An image file as ``H x W x 3`` uint8 RGB (the engine's and the trainer's working form)."""
    return np.round(read_image_array(path, "RGB") * 255.0).astype(np.uint8)
