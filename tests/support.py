"""Paths and small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

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
