"""The VAE decoder's large upsamplers convolve their input as it is, not its 2x nearest-upsampled copy.

diffusers' ``Upsample2D`` repeats every pixel into a 2x2 square (``F.interpolate``, nearest) and
then runs a 3x3 convolution on that copy, four times the input's size (268 MB at the SD VAE's last
upsampler, 256 channels at 512²). Each of the four output phases is a 3x3 convolution of the input
itself, with a kernel that sums the taps landing on the same input pixel;
:func:`~mimic_core.winograd.winograd_upsampled_conv2d` runs the four as one Winograd convolution of
the input, writing each phase into its place in the output. On a 2-core AMD EPYC the SD VAE's
last upsampler (256 channels, from 256x256) took 0.82-0.91 of the time, alternating with the
upsampling and Winograd convolution, and a decoding peaked 0.1 GiB lower; from 128x128 (512
channels) it measured 0.90 once and 1.0-1.14 in later runs; at the U-Nets' sizes the four phases'
thin products were slower at 1280 channels (3.4x, from 16x16) and at batch 1 (1.4x at 640 channels
from 32x32), and at 640 channels, batch 2, 0.6 in one run and 1.0 in another. Smaller inputs take
the stock forward, and only the VAE's upsamplers are converted.

:func:`winograd_upsamplers` turns a module's ``Upsample2D`` layers into :class:`WinogradUpsample2D`:
same parameters, same state dict. The fast path calls the convolution's weight directly, so hooks on
the upsampler's ``conv`` do not run there.
"""

from __future__ import annotations

import torch
from diffusers.models.upsampling import Upsample2D
from torch import nn

from .layer_classes import replace_layer_class
from .prepacked import PrepackedConv2d, cpu_inference_call
from . import winograd
from .winograd import PrepackedWinogradConv2d, WinogradConv2d, is_winograd_shaped

MIN_INPUT_SIDE = 256
"""From this input side up the upsampled Winograd convolution measured faster than upsampling and
then convolving by Winograd (the SD VAE decoder's last upsampler)."""


class WinogradUpsample2D(Upsample2D):
    """diffusers ``Upsample2D`` whose float32 CPU inference of a 2x nearest upsampling followed by a
    3x3 convolution runs as :func:`~mimic_core.winograd.winograd_upsampled_conv2d`, for inputs from
    :data:`MIN_INPUT_SIDE` up."""

    PLAIN_CONVOLUTIONS = (nn.Conv2d, PrepackedConv2d, WinogradConv2d, PrepackedWinogradConv2d)
    """The convolution classes whose forward is the plain convolution (not a subclass that may differ)."""

    def forward(self, hidden_states: torch.Tensor, output_size: int | None = None, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or output_size is not None or not self._upsampled_winograd_serves(hidden_states):
            return super().forward(hidden_states, output_size, *args, **kwargs)
        convolution = self._convolution()
        return winograd.winograd_upsampled_conv2d(hidden_states, convolution.weight, convolution.bias)

    def _convolution(self) -> nn.Module | None:
        return self.conv if self.name == "conv" else self.Conv2d_0

    def _upsampled_winograd_serves(self, hidden_states: torch.Tensor) -> bool:
        """Whether this call is a nearest 2x upsampling then a plain zero-padded 3x3 convolution (no
        norm, no transposed convolution) in float32 CPU inference, of an input from
        :data:`MIN_INPUT_SIDE` up whose upsampled convolution Winograd takes
        (:func:`~mimic_core.winograd.winograd_gains`)."""
        convolution = self._convolution()
        if (self.norm is not None or self.use_conv_transpose or not self.use_conv or not self.interpolate
                or type(convolution) not in self.PLAIN_CONVOLUTIONS or not is_winograd_shaped(convolution)):
            return False
        return (hidden_states.dim() == 4 and hidden_states.dtype is torch.float32
                and hidden_states.shape[1] == convolution.in_channels == self.channels
                and min(hidden_states.shape[-2:]) >= MIN_INPUT_SIDE
                and winograd.winograd_gains(convolution.in_channels, convolution.out_channels,
                                            2 * hidden_states.shape[2], 2 * hidden_states.shape[3])
                and cpu_inference_call(convolution, hidden_states))


def winograd_upsamplers(module: nn.Module) -> int:
    """Make every diffusers ``Upsample2D`` in ``module`` a :class:`WinogradUpsample2D`; returns how
    many there are."""
    return replace_layer_class(module, Upsample2D, WinogradUpsample2D)
