"""The paper's cropping rules: which pixels each metric compares.

- **Inner-ID** (SSIM, PSNR, LPIPS): the edited image and the source, both cropped to the bounding
  box of the source mask. Nothing inside the box is blanked: the source is the ground truth of
  the whole box.
- **Inter-ID** (DINO-I, CLIP-I): the edited image cropped to the box of the source mask, the
  reference cropped to the box of the reference mask, and in each crop the pixels outside that
  image's own mask ("background") set to white. Without a reference mask the whole reference is
  used as it is.

A mask may hold several separate regions; its box is the box of their union (of all masked
pixels). The paper speaks of "the union box of the source and reference masks"; the two masks
lie on different images of different sizes, so we read it as each image cropped to the union
box of its own mask's regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..crop import mask_bounds

BACKGROUND = 255
"""Value given to removed background pixels (white, on every channel)."""


@dataclass(frozen=True)
class Box:
    """Rows ``top:bottom`` and columns ``left:right`` (exclusive ends) of an image."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def bounding_box(mask: np.ndarray) -> Box:
    """The tightest box holding every masked pixel (all regions); an empty mask is an InputError."""
    return Box(*mask_bounds(np.asarray(mask)))


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    return image[box.top:box.bottom, box.left:box.right]


def remove_background(image: np.ndarray, mask: np.ndarray, fill: int = BACKGROUND) -> np.ndarray:
    """A copy of ``image`` with every pixel outside ``mask`` set to ``fill``."""
    out = np.array(image, copy=True)
    out[~np.asarray(mask, dtype=bool)] = fill
    return out


def masked_crop(image: np.ndarray, mask: np.ndarray, fill: int = BACKGROUND) -> np.ndarray:
    """``image`` cropped to the box of ``mask``, with the background removed."""
    return crop(remove_background(image, mask, fill), bounding_box(mask))


def inner_id_crops(edited: np.ndarray, source: np.ndarray, source_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edited, source) cut to the source mask's box, for SSIM, PSNR and LPIPS."""
    box = bounding_box(source_mask)
    return crop(edited, box), crop(source, box)


def inter_id_crops(edited: np.ndarray, source_mask: np.ndarray, reference: np.ndarray,
                   reference_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(edited region, reference region) with backgrounds removed, for DINO-I and CLIP-I."""
    reference_part = reference if reference_mask is None else masked_crop(reference, reference_mask)
    return masked_crop(edited, source_mask), reference_part
