"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3), for float32 inference on the CPU.

A 3x3 convolution computes each 4x4 block of its output from the 6x6 block of input around it.
Direct, that costs 16 x 9 = 144 multiplications per block, channel pair; Winograd's algorithm
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) transforms the input
block and the 3x3 kernel into 6x6 each, multiplies them point by point (36 multiplications) and
transforms the product back: the channel sums become 36 matrix products of a quarter of the direct
convolution's arithmetic. The function is the same; the rounding is not. In float32 the output
differs from the exact one by about 3e-6 of its largest value, against about 3e-7 for the direct
convolution, which is within the exact mode's bound (a relative error of 1e-4 against the authors'
order at the end of an edit; ``bench/speed.py`` prints it).

PyTorch's CPU convolutions are direct (oneDNN). On this project's 2-core AVX512 CPU, the
U-Nets' 3x3 convolutions at 64x64 and 32x32 latents (320 and 640 channels) run here in 0.42-0.76 of
the packed oneDNN time. Where the product is small (8x8 latents, 1280 channels) the matrices
are too thin and the kernel transform costs more than it saves; where channels are few and images
large (the VAE's 128 channels at 512x512) the transforms' memory traffic does: those keep the
direct convolution (:func:`winograd_gains`).

The kernel's transform is made at each call, not kept: at 36/9 of the kernel's size, kept transforms
of the U-Nets' convolutions would add more memory than the exact mode may take.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .prepacked import PrepackedConv2d

# The interpolation points 0, 1, -1, 2, -1/2 and infinity: on random data of the U-Nets' sizes the
# result's largest error is 3e-6 of its largest value against 9e-6 with the usual 0, 1, -1, 2, -2
# (the choice studied by Barabasz et al., "Error analysis and improving the accuracy of Winograd
# convolution for deep neural networks", 2020). The input and output transforms' entries are exact
# in binary.
_INPUT_TRANSFORM = torch.tensor([
    [1, 3 / 2, -2, -3 / 2, 1, 0],
    [0, -1, -5 / 2, -1 / 2, 1, 0],
    [0, 1, 1 / 2, -5 / 2, 1, 0],
    [0, -1 / 2, -1, 1 / 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 1, 3 / 2, -2, -3 / 2, 1],
], dtype=torch.float64)
"""B^T: a 6x6 input block d becomes B^T d B."""
_KERNEL_TRANSFORM = torch.tensor([
    [1, 0, 0],
    [-1 / 3, -1 / 3, -1 / 3],
    [1 / 3, -1 / 3, 1 / 3],
    [1 / 15, 2 / 15, 4 / 15],
    [-16 / 15, 8 / 15, -4 / 15],
    [0, 0, 1],
], dtype=torch.float64)
"""G: a 3x3 kernel g becomes G g G^T."""
_OUTPUT_TRANSFORM = torch.tensor([
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -1 / 2, 0],
    [0, 1, 1, 4, 1 / 4, 0],
    [0, 1, -1, 8, -1 / 8, 1],
], dtype=torch.float64)
"""A^T: the 6x6 product m becomes the 4x4 output block A^T m A."""

# Both sides' transforms at once, on blocks flattened row by row: vec(X M Y) = kron(X, Y^T) vec(M).
INPUT_TRANSFORM = torch.kron(_INPUT_TRANSFORM, _INPUT_TRANSFORM).float()
"""36x36: a flattened 6x6 input block to its flattened transform."""
KERNEL_TRANSFORM = torch.kron(_KERNEL_TRANSFORM, _KERNEL_TRANSFORM).float()
"""36x9: a flattened 3x3 kernel to its flattened 6x6 transform."""
OUTPUT_TRANSFORM = torch.kron(_OUTPUT_TRANSFORM, _OUTPUT_TRANSFORM).float()
"""16x36: a flattened 6x6 product to its flattened 4x4 output block."""

BLOCK_VALUES = 1 << 23
"""Transformed input values (36 per block and channel) computed at a time, 32 MB: on large images a
slice of rows of blocks at a time, so that its transforms and products stay small and in the caches."""


def winograd_gains(in_channels: int, out_channels: int, height: int, width: int) -> bool:
    """Whether F(4x4, 3x3) beats oneDNN's direct convolution for this size on a CPU like this
    project's, as measured: 64 or more channels each way at 32x32 to 64x64, and 256 or more input
    channels at any larger size (the VAE's 512- and 256-channel layers; not its 128-channel ones)."""
    if min(in_channels, out_channels) < 64 or min(height, width) < 32:
        return False
    return max(height, width) <= 64 or in_channels >= 256


def transform_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A (out, in, 3, 3) kernel's transform, (36, out, in)."""
    out_channels, in_channels = weight.shape[:2]
    flat = weight.reshape(out_channels * in_channels, 9)
    return (KERNEL_TRANSFORM @ flat.t()).view(36, out_channels, in_channels)


def winograd_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(input, weight, bias, padding=1)`` for a 3x3 kernel, by F(4x4, 3x3), in float32."""
    batch, in_channels, height, width = input.shape
    out_channels = weight.shape[0]
    block_rows, block_columns = -(-height // 4), -(-width // 4)
    padded = F.pad(input, (1, block_columns * 4 + 1 - width, 1, block_rows * 4 + 1 - height))
    kernel = transform_kernel(weight)
    output = input.new_empty(batch, out_channels, block_rows * 4, block_columns * 4)
    rows_at_a_time = max(1, BLOCK_VALUES // (36 * in_channels * batch * block_columns))
    for first in range(0, block_rows, rows_at_a_time):
        rows = min(rows_at_a_time, block_rows - first)
        blocks = padded[:, :, first * 4:(first + rows) * 4 + 2].unfold(2, 6, 4).unfold(3, 6, 4)
        # (6, 6, in, batch, rows, columns): each of the 36 positions a matrix of channels by blocks
        blocks = blocks.permute(4, 5, 1, 0, 2, 3).reshape(36, -1)
        transformed = (INPUT_TRANSFORM @ blocks).view(36, in_channels, -1)
        products = torch.bmm(kernel, transformed)
        outputs = (OUTPUT_TRANSFORM @ products.view(36, -1)).view(4, 4, out_channels, batch, rows, block_columns)
        target = output[:, :, first * 4:(first + rows) * 4].view(batch, out_channels, rows, 4, block_columns, 4)
        target.copy_(outputs.permute(3, 2, 4, 0, 5, 1))
    output = output[:, :, :height, :width]
    if bias is not None:
        return output + bias.view(1, -1, 1, 1)
    return output.contiguous()


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose float32 CPU inference runs by :func:`winograd_conv2d` where that is the
    layer's function (3x3, stride 1, padding 1, no dilation or groups) and :func:`winograd_gains`
    for the input's size; any other call runs the layer's stock forward."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._winograd_serves(input):
            return super().forward(input)
        return winograd_conv2d(input, self.weight, self.bias)

    def _winograd_serves(self, input: torch.Tensor) -> bool:
        tensors = [input, self.weight] + ([self.bias] if self.bias is not None else [])
        return (input.dim() == 4
                and all(t.device.type == "cpu" and t.dtype is torch.float32 for t in tensors)
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
                and winograd_gains(self.in_channels, self.out_channels, input.shape[2], input.shape[3]))


class PrepackedWinogradConv2d(WinogradConv2d, PrepackedConv2d):
    """:class:`WinogradConv2d` whose other calls run on oneDNN's packed weight
    (:class:`~mimic_core.prepacked.PrepackedConv2d`)."""


def computes_by_winograd(layer: nn.Module) -> bool:
    """Whether :func:`winograd_conv2d` is this layer's function: a zero-padded 3x3 convolution of
    stride 1, padding 1, no dilation or groups, plain or packed (not another subclass, whose
    forward may differ)."""
    return (type(layer) in (nn.Conv2d, PrepackedConv2d) and layer.kernel_size == (3, 3) and layer.stride == (1, 1)
            and layer.padding == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1
            and layer.padding_mode == "zeros")


def winograd_convolutions(module: nn.Module) -> int:
    """Make every 3x3 convolution in ``module`` that :func:`computes_by_winograd` a
    :class:`WinogradConv2d` (a packed one a :class:`PrepackedWinogradConv2d`); returns how many
    layers are."""
    converted = 0
    for layer in module.modules():
        if computes_by_winograd(layer):
            layer.__class__ = PrepackedWinogradConv2d if type(layer) is PrepackedConv2d else WinogradConv2d
        converted += isinstance(layer, WinogradConv2d)
    return converted
