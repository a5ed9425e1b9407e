"""Paths and small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("MIMICBRUSH_FIXTURE_DIR", REPO.parent / "shared" / "fixtures" / "mimicbrush_tiny"))


def read_png(path: Path, mode: str = "RGB") -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode)).copy()


def as_image_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 H x W x C -> ComfyUI-style [1, H, W, C] float."""
    return torch.from_numpy(array.astype(np.float32) / 255.0)[None]


def demo_paste_back(square_result: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The authors' demo output step, written plainly as the reference the engine's stitch must equal:
    bilinear resize to the padded square, crop the padding, blend with the feathered mask, truncate."""
    from mimic_core.preprocess import feathered_alpha, square_offset

    height, width = source.shape[:2]
    side, top, left = square_offset(height, width)
    resized = cv2.resize(square_result, (side, side), interpolation=cv2.INTER_LINEAR)[top:top + height, left:left + width]
    alpha = feathered_alpha(mask)
    return (resized * alpha + source * (1.0 - alpha)).astype(np.uint8)
