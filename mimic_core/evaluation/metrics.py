"""The paper's metrics on crops, with torchmetrics doing the arithmetic.

Conventions (the paper's table reports numbers on these scales):

- **SSIM** and **PSNR** compare images in 0..1 (``data_range=1``): torchmetrics'
  ``structural_similarity_index_measure`` (Gaussian window 11, sigma 1.5) and
  ``peak_signal_noise_ratio``. Higher is better. Identical crops have an infinite PSNR; it is
  capped at :data:`PSNR_CAP_DB` so that means over a benchmark stay finite.
- **LPIPS**: torchmetrics' LPIPS network (see ``backbones.py``), lower is better, 0 for identical crops.
- **DINO-I** and **CLIP-I**: 100 times the cosine similarity of two image embeddings
  (:func:`cosine_score`); 100 for identical images.
- **CLIP-T**: torchmetrics' CLIP score, ``max(100 * cos(image, text), 0)`` (see ``backbones.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

PSNR_CAP_DB = 100.0


def to_unit_tensor(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 as ``[1, 3, H, W]`` float64 in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].double() / 255.0


def ssim(edited: torch.Tensor, target: torch.Tensor) -> float:
    """SSIM of two ``[N, 3, H, W]`` 0..1 images (mean over the batch)."""
    return float(structural_similarity_index_measure(edited, target, data_range=1.0))


def psnr(edited: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of two ``[N, 3, H, W]`` 0..1 images, capped at :data:`PSNR_CAP_DB`."""
    return min(float(peak_signal_noise_ratio(edited, target, data_range=1.0)), PSNR_CAP_DB)


def cosine_score(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """100 x cosine similarity of matching rows of two ``[N, D]`` embedding batches."""
    return 100.0 * torch.nn.functional.cosine_similarity(first.double(), second.double(), dim=-1)
