"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3), for float32 inference on the CPU.

A 3x3 convolution computes each 4x4 block of its output from the 6x6 block of input around it.
Direct, that costs 16 x 9 = 144 multiplications per block, channel pair; Winograd's algorithm
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) transforms the input
block and the 3x3 kernel into 6x6 each, multiplies them point by point (36 multiplications) and
transforms the product back: the sums over channels become 36 matrix products with a quarter of the
direct convolution's arithmetic. The function is the same; the rounding is not. In float32 the
output differs from the exact one by 3-5e-6 of its largest value, against about 3e-7 for the
direct convolution; an edit stays well within the exact mode's bound (a relative error of 1e-4
against the authors' order at its end; ``bench/speed.py`` prints it).

PyTorch's CPU convolutions are direct (oneDNN). On this project's 2-core AVX512 CPU the U-Nets'
convolutions at 64x64 and 32x32 latents run here in 0.51-0.73 of the packed oneDNN time and the
VAE's in 0.45-0.78 of the stock time (:func:`winograd_gains` says where it is used). The kernel's
transform is made at each call, not kept: at 36/9 of the kernel's size, kept transforms of the
U-Nets' convolutions would take more memory than the exact mode may.

:func:`winograd_upsampled_conv2d` computes a 3x3 convolution of an input upsampled 2x (nearest) from
the input itself: its four output phases are four 3x3 convolutions of the input, run as one with
four times the output channels (the VAE decoder's upsamplers: :mod:`mimic_core.upsampling`).
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from .prepacked import PrepackedConv2d, cpu_inference_call

# The interpolation points 0, 1, -1, 2, -1/2 and infinity: on random data of the U-Nets' sizes the
# result's largest error is 3-5e-6 of its largest value against 9e-6 with the usual 0, 1, -1, 2, -2
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

_UPSAMPLED_TAPS = torch.tensor([
    [[1, 0, 0], [0, 1, 1], [0, 0, 0]],
    [[0, 0, 0], [1, 1, 0], [0, 0, 1]],
], dtype=torch.float64)
"""For an even (0) and odd (1) output row after a 2x nearest upsampling: which of the 3x3 kernel's
rows (columns) fall on the input row (column) above (0), at (1) and below (2). An even row 2i sees
upsampled rows 2i-1, 2i, 2i+1, that is input rows i-1, i, i; an odd one input rows i, i, i+1."""
UPSAMPLED_KERNEL_TRANSFORM = torch.stack([
    torch.kron(_KERNEL_TRANSFORM @ _UPSAMPLED_TAPS[row], _KERNEL_TRANSFORM @ _UPSAMPLED_TAPS[column])
    for row in range(2) for column in range(2)], dim=1).reshape(144, 9).float()
"""144x9: a flattened 3x3 kernel to the flattened 6x6 transforms of its four phase kernels, position first."""

BLOCK_VALUES = 1 << 23
"""Transformed input values (36 per block and channel) computed at a time, 32 MB: on large images a
slice of rows of blocks at a time, so that its transforms and products stay small and in the caches."""


MIN_CHANNELS = 64
MIN_SIDE = 32
"""Below these (channels each way, image side) the direct convolution was as fast or faster: thin
products, for which the kernel's transform costs more than the multiplications saved."""


def winograd_gains(in_channels: int, out_channels: int, height: int, width: int) -> bool:
    """Whether F(4x4, 3x3) beats oneDNN's direct convolution for this call on a CPU like this
    project's, as measured: at SD-1.5 size the U-Nets' convolutions at 64x64 and 32x32 latents
    (0.51-0.73 of the packed direct time, at batch 1 and 2), not at 16x16 (1.0 at batch 2, 1.6 at
    batch 1) nor 8x8, and the VAE's from 128 channels up (0.45-0.78), not its 3-channel input and
    output layers."""
    return min(in_channels, out_channels) >= MIN_CHANNELS and min(height, width) >= MIN_SIDE


class Workspace(threading.local):
    """Buffers kept from one call to the next, one set per thread: a tensor of tens of megabytes
    allocated afresh comes from the operating system each time, every page faulted in and zeroed,
    which made a 640x640 kernel's transform take 24 ms instead of 8.5 (and the slices' transforms
    likewise). Holds at most the largest call's intermediates (about 0.3 GB at SD-1.5 size, the
    most for the U-Nets' 1280->1280 convolution at 32x32, whose kernel transform is 236 MB) until
    :func:`release_workspace`."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def tensor(self, role: str, *shape: int) -> torch.Tensor:
        """A float32 CPU tensor of ``shape`` for ``role``, its values undefined."""
        size = math.prod(shape)
        buffer = self.buffers.get(role)
        if buffer is None or buffer.numel() < size:
            self.buffers.pop(role, None)
            # a plain tensor even in inference mode: an inference tensor may not be written outside it
            with torch.inference_mode(False):
                buffer = self.buffers[role] = torch.empty(size)
        return buffer[:size].view(shape)


_workspace = Workspace()


def release_workspace() -> None:
    """Give back this thread's kept buffers."""
    _workspace.buffers.clear()


@contextlib.contextmanager
def workspace_released_after():
    """Run a block (or, as a decorator, a function), then give back this thread's kept buffers,
    however it ends: the sampling loop keeps the U-Nets' (the largest) only while it runs, so they
    are gone before the VAE decodes, and an edit keeps none after it."""
    try:
        yield
    finally:
        release_workspace()


def transform_kernel(weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A (out, in, 3, 3) kernel's transform, written into ``out`` (36, out, in)."""
    out_channels, in_channels = weight.shape[:2]
    torch.mm(KERNEL_TRANSFORM, weight.reshape(out_channels * in_channels, 9).t(), out=out.view(36, -1))
    return out


def transform_upsampled_kernel(weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The transforms of the four phase kernels of a (out, in, 3, 3) kernel applied after a 2x nearest
    upsampling (:data:`UPSAMPLED_KERNEL_TRANSFORM`), written into ``out`` (36, 4 * out, in): phase
    (row, column) = (py, px) first, then the output channel."""
    out_channels, in_channels = weight.shape[:2]
    torch.mm(UPSAMPLED_KERNEL_TRANSFORM, weight.reshape(out_channels * in_channels, 9).t(), out=out.view(144, -1))
    return out


def winograd_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    in_place: bool = False) -> torch.Tensor:
    """``F.conv2d(input, weight, bias, padding=1)`` for a 3x3 kernel, by F(4x4, 3x3), in float32.

    A slice of rows of blocks at a time (:data:`BLOCK_VALUES`), each slice padded on its own and its
    result, bias added, written straight into the output. The kernel's transform and each slice's
    intermediates live in this thread's :class:`Workspace`.

    With ``in_place`` the output is written over ``input`` and ``input`` is returned, where
    :func:`convolves_in_place` allows it (otherwise the call fails): the caller must hold the only
    reference to it. Each slice's input is read before the slice above writes its output, so the
    result is the same, bit for bit, without a fresh output tensor of the input's size (whose pages,
    at the VAE's 512x512 layers 134 MB, are each faulted in)."""
    if in_place and not convolves_in_place(input, weight):
        raise ValueError("winograd_conv2d in place needs a contiguous, non-empty input with as many channels as the "
                         "output, sides that are multiples of 4, and, for an inference tensor, inference mode")
    if input.numel() == 0:
        return F.conv2d(input, weight, bias, padding=1)
    batch, in_channels, height, width = input.shape
    out_channels = weight.shape[0]
    kernel = transform_kernel(weight, out=_workspace.tensor("kernel", 36, out_channels, in_channels))
    if in_place:
        _convolve_into(input[:, None, None], input, kernel, bias)
        return input
    output = input.new_empty(batch, out_channels, _blocks(height) * 4, _blocks(width) * 4)
    _convolve_into(output[:, None, None], input, kernel, bias)
    return output[:, :, :height, :width].contiguous()


def convolves_in_place(input: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`winograd_conv2d` can write its output over ``input``: a contiguous, non-empty
    input with as many channels as ``weight`` has outputs and sides that are whole blocks (multiples
    of 4), so that the output has the input's shape and layout, and that may be written here (an
    inference tensor only in inference mode)."""
    return (input.dim() == 4 and input.numel() > 0 and input.is_contiguous() and weight.shape[0] == input.shape[1]
            and input.shape[2] % 4 == 0 and input.shape[3] % 4 == 0
            and (not input.is_inference() or torch.is_inference_mode_enabled()))


UPSAMPLED_ROLES = ("kernel", "products", "outputs")
"""The kept buffers :func:`winograd_upsampled_conv2d` gives back after it: its four phases make them
four times the size a plain convolution of its channels needs, and the VAE's 512x512 layers that
follow, where the decoding peaks, would otherwise hold them."""


def winograd_upsampled_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(F.interpolate(input, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` for a
    3x3 kernel, by F(4x4, 3x3) on the input as it is, in float32.

    After a 2x nearest upsampling each of the four output phases (even or odd row, even or odd column)
    is a 3x3 convolution of the input itself whose kernel sums the original's taps that land on the
    same input pixel (:data:`UPSAMPLED_KERNEL_TRANSFORM`), so the four run as one convolution of the
    input with four times the output channels, written straight into their places in the output. The
    same multiplications as the upsampled input's Winograd convolution, but its input blocks, their
    transforms and the upsampled copy itself a quarter of the size; the rounding differs by the sums
    of taps."""
    if input.numel() == 0:
        return F.conv2d(F.interpolate(input, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)
    batch, in_channels, height, width = input.shape
    out_channels = weight.shape[0]
    kernel = transform_upsampled_kernel(weight, out=_workspace.tensor("kernel", 36, 4 * out_channels, in_channels))
    block_rows, block_columns = _blocks(height), _blocks(width)
    output = input.new_empty(batch, out_channels, block_rows * 8, block_columns * 8)
    phases = output.view(batch, out_channels, block_rows * 4, 2, block_columns * 4, 2).permute(0, 3, 5, 1, 2, 4)
    _convolve_into(phases, input, kernel, bias)
    for role in UPSAMPLED_ROLES:
        _workspace.buffers.pop(role, None)
    return output[:, :, :2 * height, :2 * width].contiguous()


def _blocks(side: int) -> int:
    """How many 4-wide output blocks cover ``side``."""
    return -(-side // 4)


def _padded_rows(input: torch.Tensor, first: int, rows: int, block_columns: int) -> torch.Tensor | None:
    """The input around ``rows`` rows of blocks from block row ``first`` (at most to the last): image rows
    ``first*4 - 1`` to ``(first + rows)*4 + 1`` and columns -1 to ``block_columns*4 + 1``, zero outside
    the image, as a new tensor; None past the last block row."""
    height, width = input.shape[2:]
    rows = min(rows, _blocks(height) - first)
    if rows <= 0:
        return None
    top, bottom = first * 4 - 1, (first + rows) * 4 + 1
    return F.pad(input[:, :, max(top, 0):min(bottom, height)],
                 (1, block_columns * 4 + 1 - width, max(-top, 0), max(bottom - height, 0)))


def _convolve_into(phases: torch.Tensor, input: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Write the convolution of ``input`` by the transformed ``kernel`` (36, phases * out, in) into
    ``phases`` (batch, p, p, out, rows, columns: each phase's output, whole blocks), a slice of rows of
    blocks at a time."""
    batch, in_channels, height, width = input.shape
    phase_rows, phase_columns, out_channels = phases.shape[1:4]
    block_rows, block_columns = _blocks(height), _blocks(width)
    bias = None if bias is None else bias.view(1, 1, 1, -1, 1, 1, 1, 1)
    rows_at_a_time = max(1, BLOCK_VALUES // (36 * in_channels * batch * block_columns))
    padded = _padded_rows(input, 0, rows_at_a_time, block_columns)
    for first in range(0, block_rows, rows_at_a_time):
        rows = min(rows_at_a_time, block_rows - first)
        tiles = batch * rows * block_columns
        # block by block, each a 36 x in matrix (positions by channels), transformed by a product per block:
        # 0.90-0.95 of the time of one 36 x 36 product over a positions-first copy, which the BLAS
        # runs slowly for its 36 rows; the channels-inner layout still gives each position's
        # product over the channels a matrix with unit stride (the transformed blocks' columns)
        blocks = _workspace.tensor("blocks", batch, rows, block_columns, 6, 6, in_channels)
        blocks.copy_(padded.unfold(2, 6, 4).unfold(3, 6, 4).permute(0, 2, 3, 4, 5, 1))
        transformed = _workspace.tensor("transformed", tiles, 36, in_channels)
        torch.matmul(INPUT_TRANSFORM, blocks.view(tiles, 36, in_channels), out=transformed)
        products = _workspace.tensor("products", 36, kernel.shape[1], tiles)
        torch.bmm(kernel, transformed.permute(1, 2, 0), out=products)
        # each block's 16 outputs side by side: 0.75-0.95 of the time of the outputs position by position
        outputs = _workspace.tensor("outputs", kernel.shape[1] * tiles, 16)
        torch.mm(products.view(36, -1).t(), OUTPUT_TRANSFORM.t(), out=outputs)
        outputs = outputs.view(phase_rows, phase_columns, out_channels, batch, rows, block_columns, 4, 4)
        outputs = outputs.permute(3, 0, 1, 2, 4, 6, 5, 7)
        target = phases[..., first * 4:(first + rows) * 4, :].unflatten(-2, (rows, 4)).unflatten(-1, (block_columns, 4))
        # the next slice's rows are copied before this slice writes: written in place, this slice's
        # output covers the input row above the next slice
        padded = _padded_rows(input, first + rows, rows_at_a_time, block_columns)
        if bias is None:
            target.copy_(outputs)
        else:
            torch.add(outputs, bias, out=target)


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose float32 CPU inference runs by :func:`winograd_conv2d` where that is the
    layer's function (3x3, stride 1, padding 1, no dilation or groups) and :func:`winograd_gains`
    for the input's size; any other call runs the layer's stock forward."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._winograd_serves(input):
            return super().forward(input)
        return winograd_conv2d(input, self.weight, self.bias)

    def forward_in_place(self, input: torch.Tensor) -> torch.Tensor:
        """This layer's function of ``input``, written over ``input`` (and ``input`` returned) where the
        Winograd path serves and :func:`convolves_in_place` allows, else :meth:`forward`'s new tensor; for a
        caller that holds the only reference to ``input``. Hooks on the layer do not run in place."""
        if self._winograd_serves(input) and convolves_in_place(input, self.weight):
            return winograd_conv2d(input, self.weight, self.bias, in_place=True)
        return self(input)

    def _winograd_serves(self, input: torch.Tensor) -> bool:
        return (input.dim() == 4 and input.numel() > 0 and input.dtype is torch.float32 and is_winograd_shaped(self)
                and cpu_inference_call(self, input)
                and winograd_gains(self.in_channels, self.out_channels, input.shape[2], input.shape[3]))


class PrepackedWinogradConv2d(WinogradConv2d, PrepackedConv2d):
    """:class:`WinogradConv2d` whose other calls run on oneDNN's packed weight
    (:class:`~mimic_core.prepacked.PrepackedConv2d`)."""


def is_winograd_shaped(layer: nn.Conv2d) -> bool:
    """Whether a convolution is what :func:`winograd_conv2d` computes: zero-padded 3x3 of stride 1,
    padding 1, no dilation or groups."""
    return (layer.kernel_size == (3, 3) and layer.stride == (1, 1) and layer.padding == (1, 1)
            and layer.dilation == (1, 1) and layer.groups == 1 and layer.padding_mode == "zeros")


def computes_by_winograd(layer: nn.Module) -> bool:
    """Whether a layer is a plain or packed convolution (not another subclass, whose forward may
    differ) that :func:`is_winograd_shaped`."""
    return type(layer) in (nn.Conv2d, PrepackedConv2d) and is_winograd_shaped(layer)


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
