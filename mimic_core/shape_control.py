"""Depth for shape control: what the released model is fed, and a picture of it for people.

The released model always consumes a depth feature. With shape control on it is the depth of the
square-padded source; with it off, the depth of an all-zero input of the same size (the
authors' behaviour: the depth model still runs, on a blank input).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import preprocess as pre
from .depth import DEPTH_SIZE, depth_input_from_image, estimate_depth


def square_depth_map(depth_model, image: np.ndarray) -> torch.Tensor:
    """Depth ``[1, h, w]`` of an ``H x W x 3`` uint8 image padded to a white square, as the demo does."""
    return estimate_depth(depth_model, depth_input_from_image(pre.pad_to_square(image, 255)))


def blank_depth_map(depth_model) -> torch.Tensor:
    """Depth ``[1, 518, 518]`` of the all-zero input: what "shape control off" feeds the guider."""
    return estimate_depth(depth_model, torch.zeros(1, 3, DEPTH_SIZE, DEPTH_SIZE))


def depth_picture(depth_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A square depth map as a viewable ``[H, W, 3]`` image of the unpadded source (near = white).

    Min-max normalised, resized to the padded square's side (bilinear) and cropped to the source.
    """
    side, top, left = pre.square_offset(height, width)
    depth = depth_map.detach().to("cpu", torch.float32).reshape(1, 1, *depth_map.shape[-2:])
    depth = F.interpolate(depth, size=(side, side), mode="bilinear", align_corners=True)[0, 0]
    span = (depth.max() - depth.min()).clamp_min(1e-8)
    depth = (depth - depth.min()) / span
    return depth[top:top + height, left:left + width, None].expand(-1, -1, 3).contiguous()
