"""Convolution and linear weights packed once for oneDNN, for the U-Nets on the CPU.

PyTorch's CPU convolution hands oneDNN the weight in PyTorch's layout, and oneDNN reorders it into
its blocked layout on every call. Where a convolution does little arithmetic for the size of its
weight, as the U-Nets' 1280- and 2560-channel convolutions at 8x8 and 16x16 latents do, that
reorder costs as much as the convolution itself. Packed once, those run 1.5-2.6x faster on the
same oneDNN kernel, with the same result. Linear layers gain less, in float32 only: on a 2-core
AVX512 CPU a packed 1280->10240 layer on 256 rows took 31 ms against 45 ms, a 640->5120 layer on
1024 rows 31 ms against 37 ms, and an SD-1.5-size exact step 3.5% less time.

:func:`prepack_convolutions` turns a module's ``nn.Conv2d`` layers into :class:`PrepackedConv2d`,
and :func:`prepack_linears` its ``nn.Linear`` layers into :class:`PrepackedLinear`: same
parameters, same state dict, same function. The packed weight is made at the first forward that can
use it (a float32 input on the CPU, for convolutions one below 32x32, where packing gains; or for
convolutions a bf16 one on a CPU that computes bf16 natively; autograd not recording), or before it
by :meth:`PackedWeight.pack_for` (an edit so packs the U-Nets' layers side by side before its first
step: :mod:`mimic_core.weight_packing`), and made again when the weight has been replaced, moved or
cast, or changed in place since; any other call runs the stock forward. Writes that bypass the
version counter (through ``.data``, or to a weight created in inference mode, which has none) are
not seen: after such a write, call :func:`prepack_convolutions` (or :func:`prepack_linears`) again
(a ``.to()`` that really moves or casts also drops the packing). ComfyUI patches weights by
assigning new tensors.

In float32 the packed call gives the stock result (within float rounding). In bf16 it gains most
where float32 does (a 2560->1280 3x3 convolution at 16x16, batch 2: 85 ms stock, 66 ms packed, on
a 2-core AVX512-BF16 CPU) and its result differs from the stock bf16 one by bf16 rounding: bf16 is
not exact either way.

Once packed, the plain weight's memory-mapped pages are given back
(:func:`~mimic_core.files.release_mapped_pages`), so the packed copy takes the plain weight's place
in memory instead of doubling it (unless the weight has been written to since the conversion); the
plain weight stays valid and is read in again if used.
"""

from __future__ import annotations

import torch
from torch import nn

from .cpu_precision import native_cpu_precision
from .files import release_mapped_pages
from .layer_classes import records_autograd


def tensor_state(tensor: torch.Tensor | None) -> tuple | None:
    """What identifies a tensor's current values: its address, version counter and shape."""
    if tensor is None:
        return None
    return tensor.data_ptr(), None if tensor.is_inference() else tensor._version, tuple(tensor.shape)


def packs_dtype(dtype: torch.dtype) -> bool:
    """Whether convolutions in ``dtype`` run packed on this CPU: float32, and bf16 where oneDNN
    computes it natively (AVX512-BF16 or AMX; elsewhere bf16 is emulated and packing gains nothing)."""
    if dtype is torch.float32:
        return True
    return dtype is torch.bfloat16 and bool(native_cpu_precision(dtype))


def weights_on_cpu_in(layer: nn.Module, dtype: torch.dtype) -> bool:
    """Whether a layer's weight (and bias) are on the CPU in ``dtype``."""
    return all(t.device.type == "cpu" and t.dtype == dtype for t in (layer.weight, layer.bias) if t is not None)


def cpu_inference_call(layer: nn.Module, input: torch.Tensor) -> bool:
    """Whether a call of a layer with a weight (and bias) is CPU inference: the input, weight and
    bias on the CPU in one dtype, with autograd not recording."""
    return (input.device.type == "cpu" and weights_on_cpu_in(layer, input.dtype)
            and not records_autograd(layer, input))


class PackedWeight:
    """What a layer with a weight packed once shares: when the packed call serves, the packed weight
    (made afresh when the weight or bias it came from has changed), and dropping it on a real move
    or cast. A subclass of a torch layer names how the weight is packed (:meth:`_pack`) and how
    many dimensions its input has (:attr:`input_dims`; None: any)."""

    _packed: tuple[torch.Tensor, tuple] | None = None
    """The packed weight and the :func:`tensor_state` of the weight and bias it was packed from."""
    _as_converted: tuple | None = None
    """The weight's :func:`tensor_state` at conversion: while it holds, nothing has written to the weight
    in place, so its mapped pages still equal the file's and may be given back."""
    input_dims: int | None = None

    def _pack(self, shape: torch.Size, staging: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _packs(self, dtype: torch.dtype) -> bool:
        return packs_dtype(dtype)

    def _packs_input(self, shape: torch.Size, dtype: torch.dtype) -> bool:
        """Whether an input of this shape and dtype runs packed, given CPU inference: one this kind
        of layer takes (:attr:`input_dims`) in a dtype it packs in (:meth:`_packs`)."""
        return (self.input_dims is None or len(shape) == self.input_dims) and self._packs(dtype)

    def _packable(self, input: torch.Tensor) -> bool:
        """Whether the packed call serves: CPU inference (:func:`cpu_inference_call`) on an input
        that :meth:`_packs_input`."""
        return self._packs_input(input.shape, input.dtype) and cpu_inference_call(self, input)

    def pack_for(self, shape: torch.Size | tuple[int, ...], staging: torch.Tensor | None = None) -> bool:
        """Pack the weight now, for inputs of ``shape`` in the weight's dtype, where such a call in CPU
        inference runs packed (as its first call would); returns whether it does. Layers can so be
        packed side by side before they are first called (:mod:`mimic_core.weight_packing`).
        ``staging``: a byte buffer of at least the weight's size that this call may write, where a
        convolution's weight is laid out for a faster reorder first (:func:`channels_last_in`)."""
        if not (weights_on_cpu_in(self, self.weight.dtype) and self._packs_input(torch.Size(shape), self.weight.dtype)):
            return False
        self._packed_weight(torch.Size(shape), staging)
        return True

    def _packed_weight(self, shape: torch.Size, staging: torch.Tensor | None = None) -> torch.Tensor:
        """The packed weight, made for an input of ``shape`` (oneDNN's hint for its layout) unless
        the one made before still holds."""
        source = (tensor_state(self.weight), tensor_state(self.bias))
        if self._packed is None or self._packed[1] != source:
            self._packed = (self._pack(shape, staging), source)
            if source[0] == self._as_converted:
                release_mapped_pages([self.weight])
        return self._packed[0]

    def _convert(self) -> None:
        self._packed = None
        self._as_converted = tensor_state(self.weight)

    def _apply(self, fn, recurse=True):
        """Moved or cast: the next forward packs what the weight has become. A move to where it
        already is (hosts such as ComfyUI call ``.to()`` on every load) keeps the packing."""
        before = (tensor_state(self.weight), tensor_state(self.bias))
        result = super()._apply(fn, recurse)
        if (tensor_state(self.weight), tensor_state(self.bias)) != before:
            self._packed = None
        return result


FLOAT32_PACKED_BELOW_SIDE = 32
"""In float32 a convolution first packs its weight on an input smaller than this on a side (and
then stays packed: :meth:`PrepackedConv2d._packable`). Above, the stock
call measured as fast or faster on a 2-core AVX512 CPU at SD-1.5 size: the U-Nets' 1x1 convolutions
at 64x64 and 32x32 latents, their input and output layers and their stride-2 convolutions there
(a 320->960 1x1 convolution at 64x64, batch 2: 26 ms stock, 38 ms packed; the 3x3 ones of that size
run by Winograd), where at 16x16 and 8x8 packing gains up to 2.2x. In bf16 packed calls gain at 64x64
too (its input layer took 2.1 ms packed against 6.9 ms), so bf16 packs at every size."""


class PrepackedConv2d(PackedWeight, nn.Conv2d):
    """``nn.Conv2d`` whose CPU float32 (below :data:`FLOAT32_PACKED_BELOW_SIDE`) or native bf16 inference
    runs on a weight packed once for oneDNN."""

    input_dims = 4

    def _packs_input(self, shape: torch.Size, dtype: torch.dtype) -> bool:
        """Once packed, a layer stays on its packed weight at every size: the plain weight's pages
        were given back, and reading them in again would hold both copies."""
        return super()._packs_input(shape, dtype) and (dtype is not torch.float32 or self._packed is not None
                                                       or min(shape[-2:]) < FLOAT32_PACKED_BELOW_SIDE)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._packable(input):
            return super().forward(input)
        return torch.ops.mkldnn._convolution_pointwise(
            input, self._packed_weight(input.shape), self.bias, list(self.padding), list(self.stride), list(self.dilation),
            self.groups, "none", [], "")

    def _pack(self, shape: torch.Size, staging: torch.Tensor | None) -> torch.Tensor:
        weight = self.weight.detach()
        if staging is not None and weight.shape[-2:] != (1, 1):
            weight = channels_last_in(staging, weight)
        return torch.ops.mkldnn._reorder_convolution_weight(
            weight, list(self.padding), list(self.stride), list(self.dilation), self.groups, list(shape))


class PrepackedLinear(PackedWeight, nn.Linear):
    """``nn.Linear`` whose CPU float32 inference runs on a weight packed once for oneDNN. Not bf16: there
    the U-Nets' steps measured the same time packed (an SD-1.5-size step 8.39 s either way), and a
    packed copy of a weight that was cast, not mapped from its file, would only add memory."""

    def _packs(self, dtype: torch.dtype) -> bool:
        return dtype is torch.float32

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._packable(input):
            return super().forward(input)
        return torch.ops.mkldnn._linear_pointwise(input, self._packed_weight(input.shape), self.bias, "none", [], "")

    def _pack(self, shape: torch.Size, staging: torch.Tensor | None) -> torch.Tensor:
        # the rows of the input it is packed for are oneDNN's hint for the layout; any number of rows runs on it.
        # No staging: from the transposed layout the reorder of a linear weight took 3.5 times as long.
        return torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), shape[:-1].numel())


def channels_last_in(staging: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in, kh, kw) copied into the byte buffer ``staging`` in channels-last order (each
    kernel position's input channels side by side), as a tensor of the same shape and values.

    PyTorch's reorder of a convolution weight for an input size first makes the weight channels-last,
    in a fresh tensor unless it is so already, and then lets oneDNN reorder that into a new packed
    tensor. A fresh tensor of tens of megabytes has every page faulted in: staged in a buffer kept
    from layer to layer, a 2560->1280 3x3 weight packed in 0.42-0.59 ms per MB against 0.71-0.88 (on
    a 2-core AMD EPYC; bf16 0.46 against 0.74), with the same packed result, and the U-Nets' 448
    layers for a 512 edit in 3.7-4.5 s against 4.7-5.9. The packed tensor is always new: it never
    views the buffer."""
    out_channels, in_channels, height, width = weight.shape
    staged = staging[:weight.numel() * weight.element_size()].view(weight.dtype)
    staged = staged.view(out_channels, height, width, in_channels).permute(0, 3, 1, 2)
    return staged.copy_(weight)


def prepacks(module: nn.Module) -> bool:
    """Whether :class:`PrepackedConv2d` computes this module's function: a plain zero-padded
    ``nn.Conv2d`` with numeric padding (not a subclass, whose forward may differ)."""
    return (torch.backends.mkldnn.is_available() and type(module) is nn.Conv2d and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def prepack_convolutions(module: nn.Module) -> int:
    """Make every plain ``nn.Conv2d`` in ``module`` a :class:`PrepackedConv2d` (and make those that
    already are pack afresh at their next forward); returns how many layers are packed."""
    return _convert_layers(module, PrepackedConv2d, prepacks)


def prepack_linears(module: nn.Module) -> int:
    """Make every plain ``nn.Linear`` in ``module`` a :class:`PrepackedLinear` (and make those that
    already are pack afresh at their next forward); returns how many layers are packed."""
    return _convert_layers(module, PrepackedLinear,
                           lambda layer: torch.backends.mkldnn.is_available() and type(layer) is nn.Linear)


def _convert_layers(module: nn.Module, kind: type[PackedWeight], convertible) -> int:
    converted = 0
    for layer in module.modules():
        if convertible(layer):
            layer.__class__ = kind
        if isinstance(layer, kind):
            layer._convert()
            converted += 1
    return converted
