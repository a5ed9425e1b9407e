"""The VAE's ResNet blocks compute their elementwise steps in place in inference.

diffusers' ``ResnetBlock2D`` makes a new tensor at every step: GroupNorm, SiLU, the convolution,
SiLU again, the residual sum and its division by ``output_scale_factor`` (1.0 in the SD VAE).
In the VAE at 512² those are 8-268 MB each; a tensor that large comes fresh from the operating
system at every call, every page faulted in and zeroed. The SiLUs, the residual's addition and the
division can all write into the tensor just made by the step before
(GroupNorm's output, a convolution's output), which nothing else holds: the same operations on the
same values, in the same order, so the result is the same bit for bit, with half the fresh tensors.
A convolution run by Winograd's algorithm (:mod:`mimic_core.winograd`) writes its output over its
input, the GroupNorm and SiLU's tensor, where it has as many output channels as input channels (and
the sides are multiples of 4), and the second GroupNorm writes over the first convolution's output
(:mod:`mimic_core.group_norm`, bit for bit the stock result): a block that keeps its channel count
then makes one fresh tensor of the four, one that changes it two.
The U-Nets keep the stock block: at their sizes (10 MB at the 64x64 latents) a full-size U-Net pass
measured no faster in place (7.95 s against 7.78 s, four passes each way, alternating).

:func:`in_place_resnet_blocks` turns a module's ``ResnetBlock2D`` layers into
:class:`InPlaceResnetBlock2D`: same parameters, same state dict. Calls that record autograd, pass
a time embedding or run under autocast, and blocks that resample, project a time embedding, use
``scale_shift``, another nonlinearity, layers other than GroupNorm and Conv2d, a residual sum that
broadcasts or active dropout take the stock forward. The in-place path calls SiLU directly, so
hooks on a block's ``nonlinearity`` module do not run there, nor those on ``norm2`` or on a convolution
that writes over its input; it writes into what ``norm1``, ``norm2`` and the convolutions return, so a
hook that keeps one of those sees it overwritten.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from .group_norm import group_norm_in_place, normalizes_in_place
from .layer_classes import records_autograd, replace_layer_class
from .winograd import WinogradConv2d


class InPlaceResnetBlock2D(ResnetBlock2D):
    """diffusers ``ResnetBlock2D`` whose inference without a time embedding (the VAE's) writes its
    SiLUs, residual addition and scaling into the tensors its GroupNorms and convolutions return."""

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or temb is not None or not self._in_place_serves(input_tensor):
            return super().forward(input_tensor, temb, *args, **kwargs)
        # each layer below returns a fresh tensor (checked in _in_place_serves), which nothing else holds
        hidden = _convolved(self.conv1, F.silu(self.norm1(input_tensor), inplace=True))
        hidden = _convolved(self.conv2, F.silu(_normalized(self.norm2, hidden), inplace=True))
        shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        hidden.add_(shortcut)
        if self.output_scale_factor != 1.0:
            hidden.div_(self.output_scale_factor)
        return hidden

    def _in_place_serves(self, input_tensor: torch.Tensor) -> bool:
        """Whether the in-place steps are this call's function, for a call without a time embedding:
        GroupNorms and convolutions (whose outputs are fresh tensors), SiLU, no resampling, no time
        projection (the stock block fails without its embedding, as it does with ``scale_shift``;
        the VAE decoder's ``group`` does nothing without one), no active dropout, no autocast (under
        which the stock residual sum may change dtype), autograd not recording."""
        layers_fit = (all(isinstance(norm, nn.GroupNorm) for norm in (self.norm1, self.norm2))
                      and all(isinstance(conv, nn.Conv2d) for conv in (self.conv1, self.conv2))
                      and type(self.nonlinearity) is nn.SiLU)
        # without a shortcut convolution the sum must not broadcast (stock's would, add_ cannot)
        shapes_fit = self.conv_shortcut is not None or self.conv2.out_channels == input_tensor.shape[1]
        if (not layers_fit or not shapes_fit or self.upsample is not None or self.downsample is not None
                or self.time_emb_proj is not None or self.time_embedding_norm == "scale_shift"
                or (self.training and self.dropout.p > 0) or autocast_enabled(input_tensor.device.type)):
            return False
        return not records_autograd(self, input_tensor)


def _normalized(norm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``norm(hidden)`` for a ``hidden`` that nothing else holds: a GroupNorm writes it over ``hidden``
    where it can (:func:`~mimic_core.group_norm.group_norm_in_place`)."""
    return group_norm_in_place(norm, hidden) if normalizes_in_place(norm, hidden) else norm(hidden)


def _convolved(conv: nn.Conv2d, hidden: torch.Tensor) -> torch.Tensor:
    """``conv(hidden)`` for a ``hidden`` that nothing else holds: a Winograd convolution writes it over
    ``hidden`` where it can (:meth:`~mimic_core.winograd.WinogradConv2d.forward_in_place`)."""
    return conv.forward_in_place(hidden) if isinstance(conv, WinogradConv2d) else conv(hidden)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``. ``torch.is_autocast_enabled`` takes the device
    type from PyTorch 2.4 on; older releases (ComfyUI brings its own) have one function per device."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def in_place_resnet_blocks(module: nn.Module) -> int:
    """Make every diffusers ``ResnetBlock2D`` in ``module`` an :class:`InPlaceResnetBlock2D`;
    returns how many there are."""
    return replace_layer_class(module, ResnetBlock2D, InPlaceResnetBlock2D)
