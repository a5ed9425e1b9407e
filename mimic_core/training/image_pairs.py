"""Training pairs from single images (the paper's SAM branch): the source and the reference are two
independently and strongly augmented copies of one image. An optional segmentation map beside the
image (``photo.jpg`` -> ``photo.mask.png``; 0 = background, every other value one segment, in an
8- or 16-bit grey or an RGB PNG) lets a sample be masked by a whole segment.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..image_files import read_rgb_uint8
from .data_files import MASK_SUFFIX


class ImageReadError(Exception):
    """An image or its segmentation map could not be decoded."""


def read_image(path: Path) -> np.ndarray:
    """``H x W x 3`` uint8 RGB (grey is repeated, alpha dropped), read as every command reads images."""
    try:
        return read_rgb_uint8(path)
    except InputError as err:
        raise ImageReadError(str(err)) from err


def segments_path(image_path: Path) -> Path:
    return image_path.with_name(image_path.stem + MASK_SUFFIX)


def read_segments(image_path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The image's label map (``H x W`` int64) if it has one, None otherwise. Read raw with OpenCV:
    its values are labels, not intensities, and must not be scaled as pictures are."""
    path = segments_path(image_path)
    if not path.is_file():
        return None
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise ImageReadError(f"OpenCV cannot decode the segmentation map '{path}'")
    if labels.ndim == 3:
        labels = labels[..., :3].astype(np.int64)
        labels = labels[..., 0] * 65536 + labels[..., 1] * 256 + labels[..., 2]
    if labels.shape[:2] != shape:
        raise ImageReadError(f"the segmentation map '{path}' is {labels.shape[1]}x{labels.shape[0]}, "
                             f"its image {shape[1]}x{shape[0]}")
    return labels.astype(np.int64)
