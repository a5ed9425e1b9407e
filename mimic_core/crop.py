"""Where an edit happens: a square box around the mask, cut out, and stitched back.

The authors pad the whole image to a square and work at 512², so a small edit on a large photo
is generated at a fraction of the photo's resolution. Editing a square *context crop* around the
mask instead, resized to the working size, generates the masked region at up to the working
size's resolution; the result is stitched back into the untouched full-resolution original with
the demo's feathered mask, at the original's scale. The authors' whole-image mode is the special
case whose box is the padded square of the whole image.

Boxes are in source pixel coordinates and may reach past the image edges: those parts are
padding (white for images, black for masks), used only when the image is too small to hold the
box on that axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .edit_options import RegionOptions, check_whole
from .errors import InputError
from .preprocess import FEATHER_PASSES, feathered_alpha, square_offset

FEATHER_RADIUS = FEATHER_PASSES  # ten 3x3 passes spread the mask by at most ten pixels


@dataclass(frozen=True)
class CropBox:
    """A square ``side x side`` window whose top-left corner is (``top``, ``left``) in the source."""

    top: int
    left: int
    side: int

    @property
    def bottom(self) -> int:
        return self.top + self.side

    @property
    def right(self) -> int:
        return self.left + self.side


def whole_image_box(height: int, width: int) -> CropBox:
    """The authors' box: the image centred in the square of its long side."""
    side, top, left = square_offset(height, width)
    return CropBox(-top, -left, side)


def mask_bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), exclusive, of the nonzero pixels of a 2-D mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InputError("The mask is empty: paint the region of the source to regenerate.")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _place(start: int, extent: int, side: int, length: int) -> int:
    """Start of a window of ``side`` holding [start, start + extent) and as much image as possible."""
    if side >= length:
        return -((side - length) // 2)  # the image is too small on this axis: centre it, pad both ends
    centred = start - (side - extent) // 2
    return min(max(centred, 0), length - side)


def plan_crop(mask: np.ndarray, context: float = 2.0, min_side: int = 256) -> CropBox:
    """A square box around the mask's nonzero pixels.

    Its side is the mask's bounding box's longer side times ``context`` (and at least the box
    plus the feather band on each side, and ``min_side``), but never more than the image's long
    side; it is centred on the mask and shifted to stay inside the image where the image allows.
    """
    RegionOptions("crop", context, min_side)
    height, width = mask.shape[:2]
    top, left, bottom, right = mask_bounds(mask)
    extent = max(bottom - top, right - left)
    side = max(math.ceil(extent * context), extent + 2 * FEATHER_RADIUS + 2, int(min_side))
    side = min(side, max(height, width))
    return CropBox(_place(top, bottom - top, side, height), _place(left, right - left, side, width), side)


def squares_edited(mask: np.ndarray, region: str) -> int:
    """How many squares an edit of ``region`` ("whole", "crop", "crop_each") works on for ``mask``, each
    running every sampling step: one, or one per 8-connected region (counted without a mask each)."""
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1 if region == "crop_each" else 1


def region_masks(mask: np.ndarray) -> list[np.ndarray]:
    """One mask per 8-connected region of ``mask``, in reading order of their first pixel."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [(labels == label).astype(np.uint8) for label in range(1, count)]


def _overlap(box: CropBox, height: int, width: int):
    """Slices of the box and of the image that cover the same pixels."""
    top, left = max(box.top, 0), max(box.left, 0)
    bottom, right = min(box.bottom, height), min(box.right, width)
    inside = (slice(top - box.top, bottom - box.top), slice(left - box.left, right - box.left))
    return inside, (slice(top, bottom), slice(left, right))


def cut(image: np.ndarray, box: CropBox, fill: int) -> np.ndarray:
    """The box's pixels of ``image`` (``H x W`` or ``H x W x C``), padding filled with ``fill``."""
    canvas = np.full((box.side, box.side) + image.shape[2:], fill, dtype=image.dtype)
    inside, source = _overlap(box, *image.shape[:2])
    canvas[inside] = image[source]
    return canvas


def stitch(original: np.ndarray, mask: np.ndarray, box: CropBox, result: np.ndarray) -> np.ndarray:
    """Blend a square ``result`` of the box back into ``original`` with the demo's feathered mask.

    ``result`` (any square size) is resized to the box (bilinear) and blended as
    ``result * a + original * (1 - a)`` truncated to uint8, with ``a`` the 0/255 mask blurred by
    ten 3x3 Gaussian passes at the original's scale. Pixels where ``a`` is 0, or outside the box,
    are returned unchanged. The blur runs on a window around the mask only; zeros padded around
    it make that identical to blurring the whole image.
    """
    height, width = original.shape[:2]
    out = original.copy()
    inside, target = _overlap(box, height, width)
    resized = cv2.resize(result, (box.side, box.side), interpolation=cv2.INTER_LINEAR)
    in_box = np.zeros((height, width), bool)
    in_box[target] = True
    mask = mask.astype(np.uint8) * in_box
    if not mask.any():
        return out
    top, left, bottom, right = mask_bounds(mask)
    margin = FEATHER_RADIUS + 1
    window = (slice(max(top - margin, 0), min(bottom + margin, height)),
              slice(max(left - margin, 0), min(right + margin, width)))
    alpha = feathered_alpha(mask[window])
    alpha[~in_box[window]] = 0.0
    placed = original.copy()
    placed[target] = resized[inside]
    blended = (placed[window] * alpha + original[window] * (1.0 - alpha)).astype(np.uint8)
    changed = alpha[..., 0] > 0
    out[window][changed] = blended[changed]
    return out


def crop_for_editing(image: np.ndarray, mask: np.ndarray, working_size: int, context: float = 2.0,
                     min_side: int = 256) -> tuple[np.ndarray, np.ndarray, CropBox]:
    """The square crop around ``mask`` at ``working_size``: image (Lanczos), mask (nearest), box."""
    from .preprocess import resize_lanczos

    check_whole("working_size", working_size, 8, " (pixels a side)")
    box = plan_crop(mask, context, min_side)
    crop_mask = cv2.resize(cut(mask.astype(np.uint8), box, 0), (working_size, working_size),
                           interpolation=cv2.INTER_NEAREST)
    return resize_lanczos(cut(image, box, 255), working_size), crop_mask, box
