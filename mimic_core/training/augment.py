"""Augmentation of one training image (and a mask aligned with it), with kornia.

The paper's list: colour jitter, rotation, resize, flip, random perspective. Colour jitter
touches the image only; every geometric transform is applied to the image and its mask with the
same parameters (the mask resampled nearest-neighbour), so a mask drawn on the image still covers
the same content afterwards. "Resize" is a random resized crop back to the working size. Areas a
rotation or perspective brings in from outside the image are black.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import AugmentStrength


class Augmenter:
    """Augments ``size x size`` uint8 RGB images; the same ``seed`` gives the same result."""

    def __init__(self, strength: AugmentStrength, size: int):
        import kornia.augmentation as K

        self.size = size
        self.colour = K.ColorJitter(strength.brightness, strength.contrast, strength.saturation, strength.hue,
                                    p=strength.jitter_probability)
        self.geometry = K.AugmentationSequential(
            K.RandomRotation(strength.rotation_degrees, p=strength.rotation_probability),
            K.RandomResizedCrop((size, size), scale=(strength.crop_scale_min, strength.crop_scale_max)),
            K.RandomHorizontalFlip(p=strength.flip_probability),
            K.RandomPerspective(strength.perspective, p=strength.perspective_probability),
            data_keys=["input", "mask"],
        )

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``image`` (``size x size x 3`` uint8) and ``mask`` (``size x size``, 0/1, or None for
        none) augmented together; returns the image and the mask (all zero when none was given).

        The random draws come from torch's generator seeded with ``seed`` inside a forked RNG
        state, so the caller's random state is untouched and a sample is reproducible from its seed.
        """
        if image.shape != (self.size, self.size, 3) or image.dtype != np.uint8:
            raise ValueError(f"expected a {self.size}x{self.size}x3 uint8 image, got {image.shape} {image.dtype}")
        if mask is None:
            mask = np.zeros(image.shape[:2], dtype=np.uint8)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(255.0)
        mask_tensor = torch.from_numpy(np.array(mask)).float()[None, None]
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            pixels = self.colour(pixels)
            pixels, mask_tensor = self.geometry(pixels, mask_tensor)
        out = pixels[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return np.ascontiguousarray(out), (mask_tensor[0, 0] > 0.5).numpy().astype(np.uint8)
