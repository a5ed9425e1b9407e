"""The authors' demo pre- and post-processing, as functions on images.

Public inputs and outputs are ComfyUI-style tensors (``[B, H, W, C]`` float in 0..1 for images,
``[B, H, W]`` or ``[H, W]`` in 0..1 for masks). Inside, images are uint8 ``H x W x 3`` arrays:
the released model was run on uint8 images resized by PIL and OpenCV, and matching those
resamplers bit for bit is what makes the results reproduce the authors'.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from PIL import Image

from .errors import InputError

try:
    from transformers import CLIPImageProcessorPil as _ClipProcessor
except ImportError:  # transformers 4.x: the plain class is the PIL implementation
    from transformers import CLIPImageProcessor as _ClipProcessor

logger = logging.getLogger(__name__)

WORKING_SIZE = 512
FEATHER_PASSES = 10


def as_tensor(value, what: str, form: str) -> torch.Tensor:
    """``value`` as a tensor (a numpy array is wrapped as it is); anything else (a PIL image, a file's
    path, None) is refused with the way to read a file."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value) if not value.flags.writeable else np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise InputError(f"The {what} must be a torch tensor (or numpy array) {form}, got {type(value).__name__}: read "
                         "a file with mimic_core.image_files.read_image(path, 'RGB') (read_mask(path) for a mask).")
    return value


def image_to_uint8(image: torch.Tensor, what: str = "image") -> np.ndarray:
    """One ``[H, W, C]`` (or ``[1, H, W, C]``) 0..1 image as ``H x W x 3`` uint8 RGB.

    Grayscale (C=1) is repeated to RGB; an alpha channel (C=2 or 4) is dropped, as PIL's
    ``convert("RGB")`` does in the authors' demo. A numpy array is taken as the tensor it holds.
    """
    image = as_tensor(image, what, "[H, W, C] in 0..1 (or uint8 0..255)")
    if image.shape and image.shape[-1] not in (1, 2, 3, 4) and image.ndim in (3, 4) and image.shape[-3] in (1, 3, 4):
        raise InputError(f"The {what} is channels-first {tuple(image.shape)}; give it channels-last, [H, W, C] or "
                         "[1, H, W, C] (image.movedim(-3, -1)), as ComfyUI's IMAGE is.")
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise InputError(f"Expected one {what}, got a batch of {image.shape[0]}; pass them one at a time.")
        image = image[0]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"The {what} must be [H, W, C] with 1 to 4 channels, got shape {tuple(image.shape)}.")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"The {what} is empty (shape {tuple(image.shape)}).")
    channels = image.shape[-1]
    rgb = image[..., :1].expand(-1, -1, 3) if channels in (1, 2) else image[..., :3]
    if rgb.dtype == torch.uint8:  # 0..255 by its type: nothing to guess
        return np.ascontiguousarray(rgb.detach().cpu().numpy())
    values = rgb.detach().to("cpu", torch.float32)
    _check_unit_range(values, what)
    values = values.clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(values.numpy())


def _check_unit_range(values: torch.Tensor, what: str) -> None:
    """Refuse what would otherwise turn silently into another picture: NaN or infinite values, and
    0..255 values given as floats (clamped to 0..1 they would be a white image or a full mask)."""
    if not torch.isfinite(values).all():
        raise InputError(f"The {what} holds NaN or infinite values: give finite values in 0..1.")
    if values.numel() and values.max() > 1.0 + 1e-3:
        raise InputError(f"The {what} has values up to {values.max().item():g}, but floats must be in 0..1: divide a "
                         "0..255 picture by 255 (or pass it as a uint8 tensor, which is read as 0..255).")


def mask_to_binary(mask: torch.Tensor, height: int, width: int, of: str = "source") -> np.ndarray:
    """One mask as an ``H x W`` uint8 array of 0/1 (1 = edit), at its image's size (``of``: which
    image it is drawn on, "source" or "reference", for the messages).

    Binarised at half range, like the demo's ``> 128`` on 8-bit masks. A mask of another size
    but the same aspect ratio as the source (the same mask at another resolution) is resized to
    it with nearest-neighbour sampling, with a warning; a mask of another aspect ratio belongs
    to another image and is refused. An empty mask is an error: there would be nothing to edit; so
    is a faint one, whose values never pass half range.
    Shapes ComfyUI produces are understood (``[H, W]``, ``[1, H, W]``, ``[H, W, 1]``,
    ``[1, H, W, 1]``); a uint8 mask is read as 0..255, float values outside 0..1 are refused.
    """
    what = "mask" if of == "source" else f"{of} mask"
    mask = as_tensor(mask, what, "[H, W] in 0..1 (or uint8 0..255)")
    if mask.ndim == 4 and mask.shape[0] == 1 and mask.shape[-1] == 1:  # [1, H, W, 1]: an image-shaped mask
        mask = mask[0]
    if mask.ndim == 3 and mask.shape[-1] == 1 and mask.shape[0] != 1:  # [H, W, 1]
        mask = mask[..., 0]
    if mask.ndim == 3:
        if mask.shape[0] != 1:
            raise InputError(f"Expected one mask, got a batch of {mask.shape[0]}; pass them one at a time.")
        mask = mask[0]
    if mask.ndim != 2 or mask.shape[0] < 1 or mask.shape[1] < 1:
        raise InputError(f"The mask must be [H, W] (or [1, H, W]), got shape {tuple(mask.shape)}.")
    mask = mask.detach().to("cpu", torch.float32) / (255.0 if mask.dtype == torch.uint8 else 1.0)
    _check_unit_range(mask, what)
    strongest = float(mask.max()) if mask.numel() else 0.0
    if 0.0 < strongest <= 1.5 / 255:
        raise InputError(f"The {what} holds only 0 and 1 (of 255): a label mask? White (255, or 1.0 as floats) marks "
                         f"the region; scale it to 0 and 255 (multiply by 255).")
    if 0.0 < strongest <= 0.5:
        task = "regenerate" if of == "source" else "imitate"
        raise InputError(f"The {what} is too faint: its strongest value is {strongest:.3g}, and only values above 0.5 "
                         f"mark where to {task}. Paint it at full strength (or threshold it first: in ComfyUI, a "
                         f"ThresholdMask below {strongest:.3g}).")
    if not (mask > 0.5).any() and of == "source":
        raise InputError("The mask is empty: paint the region of the source to regenerate (white = edit; in "
                         "ComfyUI, paint it with the mask editor or connect a MASK from a segmenter).")
    if not (mask > 0.5).any():
        raise InputError(f"The {what} is empty: paint the part of the {of} to imitate (white), or leave the "
                         f"{what} out to imitate all of it.")
    if tuple(mask.shape) != (height, width):
        if abs(mask.shape[0] * width - mask.shape[1] * height) > max(mask.shape[0], height, mask.shape[1], width):
            raise InputError(
                f"The {what} is {mask.shape[1]}x{mask.shape[0]} but the {of} image is {width}x{height}, "
                "another aspect ratio: it was not drawn on this image. Use a mask made from this image "
                "(or resize it to the image's size first)."
            )
        logger.warning("The %s is %dx%d but the %s is %dx%d; resizing it (nearest) to the %s. Make "
                       "the mask at the %s's size to keep its exact edges.",
                       what, mask.shape[1], mask.shape[0], of, width, height, of, of)
        mask = torch.nn.functional.interpolate(mask[None, None], size=(height, width), mode="nearest")[0, 0]
    binary = (mask > 0.5).to(torch.uint8).numpy()
    if not binary.any():
        raise InputError(f"The {what}'s painted region vanished when it was resized to the {of}: paint a larger "
                         f"region, or make the mask at the {of}'s size.")
    return np.ascontiguousarray(binary)


def square_offset(height: int, width: int) -> tuple[int, int, int]:
    """Side of the padded square and the (top, left) offset of the image inside it."""
    side = max(height, width)
    return side, (side - height) // 2, (side - width) // 2


def pad_to_square(image: np.ndarray, fill: int) -> np.ndarray:
    """Centre ``image`` on a square canvas of its long side, filled with ``fill`` (255 white, 0 black)."""
    height, width = image.shape[:2]
    side, top, left = square_offset(height, width)
    canvas = np.full((side, side) + image.shape[2:], fill, dtype=image.dtype)
    canvas[top:top + height, left:left + width] = image
    return canvas


def make_collage(padded_source: np.ndarray, padded_mask: np.ndarray) -> np.ndarray:
    """The padded source with the masked pixels set to black (-1 after normalisation)."""
    return np.where(padded_mask[..., None] > 0, np.uint8(0), padded_source)


def resize_lanczos(image: np.ndarray, size: int) -> np.ndarray:
    """PIL Lanczos resize to ``size x size``, as the authors' pipeline does."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


def binary_mask_at(padded_mask: np.ndarray, size: int) -> np.ndarray:
    """The 0/1 mask at the working size: 0/255 image, PIL "L", Lanczos, binarised at 0.5."""
    image = Image.fromarray(np.repeat(padded_mask[..., None] * 255, 3, axis=2)).convert("L")
    resized = np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0
    return (resized >= 0.5).astype(np.uint8)


def to_model_range(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> contiguous ``[1, 3, H, W]`` float32 in [-1, 1].

    Contiguous NCHW matters: on the CPU, GroupNorm is measurably less accurate on a
    channels-last tensor.
    """
    scaled = torch.from_numpy(np.array(image, dtype=np.float32)) / 255.0
    return (scaled * 2.0 - 1.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def latent_mask(mask_at_size: np.ndarray, latent_size: int) -> torch.Tensor:
    """``[1, 1, h, w]`` float mask on the latent grid (nearest-neighbour)."""
    mask = torch.from_numpy(mask_at_size.astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(mask, size=(latent_size, latent_size))


_CLIP_PROCESSOR = None


def clip_pixels(padded_reference: np.ndarray) -> torch.Tensor:
    """CLIP's default preprocessing (bicubic to 224, centre crop, CLIP mean/std), PIL-based."""
    global _CLIP_PROCESSOR
    if _CLIP_PROCESSOR is None:
        _CLIP_PROCESSOR = _ClipProcessor()
    pixels = _CLIP_PROCESSOR(images=Image.fromarray(padded_reference), return_tensors="pt").pixel_values
    return pixels.contiguous()


def output_to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """Decoded ``[N, 3, H, W]`` in [-1, 1] -> ``N x H x W x 3`` uint8 (rounded)."""
    values = (decoded.to(torch.float32) / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    return values.permute(0, 2, 3, 1).cpu().numpy()


def feathered_alpha(mask: np.ndarray) -> np.ndarray:
    """The demo's blend weight: the 0/255 mask blurred by ten 3x3 Gaussian passes, divided by 255."""
    alpha = np.repeat(mask[..., None] * np.uint8(255), 3, axis=2)
    for _ in range(FEATHER_PASSES):
        alpha = cv2.GaussianBlur(alpha, (3, 3), 0)
    return alpha / 255.0


def uint8_to_image(array: np.ndarray) -> torch.Tensor:
    """``[N,] H x W x 3`` uint8 -> ``[N, H, W, 3]`` float32 in 0..1."""
    tensor = torch.from_numpy(np.require(array, requirements=["C", "W"])).to(torch.float32) / 255.0
    return tensor if tensor.ndim == 4 else tensor.unsqueeze(0)
