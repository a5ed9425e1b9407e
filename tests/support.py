"""Paths and small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("MIMICBRUSH_FIXTURE_DIR", REPO.parent / "shared" / "fixtures" / "mimicbrush_tiny"))
REQUIRE_ENV = "MIMICBRUSH_REQUIRE_ALL"


def unavailable(reason: str, how: str):
    """Skip a test whose resource this machine lacks, saying what is missing and how to provide it;
    fail instead where ``MIMICBRUSH_REQUIRE_ALL=1`` (CI), so that nothing is skipped there."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires it): {how}")
    pytest.skip(f"{reason}: {how}")


def require_fixture() -> Path:
    """The golden fixture's folder, or a skip that says where it is looked for."""
    if not (FIXTURE / "manifest.json").is_file():
        unavailable(f"no golden fixture at {FIXTURE}",
                    "it sits beside the repository as ../shared/fixtures/mimicbrush_tiny in this project's CI; "
                    "set MIMICBRUSH_FIXTURE_DIR to its folder")
    return FIXTURE


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


def resident_bytes() -> int:
    """This process's resident memory now (VmRSS), in bytes."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024
