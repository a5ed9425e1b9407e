"""Weights packed once for oneDNN, for the U-Nets on the CPU.

PyTorch's CPU convolution hands oneDNN the weight in PyTorch's layout, and oneDNN reorders it into
its blocked layout on every call. Where a convolution does little arithmetic for the size of its
weight, as the U-Nets' 1280- and 2560-channel convolutions at 8x8 and 16x16 latents do, that
reorder costs as much as the convolution itself. Packed once, those run 1.5-2.6x faster on the
same oneDNN kernel, with the same result. The transformer blocks' GEGLU feed-forward (a product
with eight times the block's width, then half of it through GELU times the other half) becomes
two oneDNN products on packed weights, the gate's with the exact (erf) GELU fused and the value's
with the product by the gate fused: one pass over its activations instead of a bias copy, a GELU
and a product; the same function up to float rounding.

:func:`prepack_unet` turns a module's ``nn.Conv2d`` layers into :class:`PrepackedConv2d` and its
``GEGLU`` layers into :class:`PrepackedGEGLU`: same parameters, same state dict, same function.
The packed weights are made at the first forward that can use them (a float32 input on the CPU,
autograd not recording) and made again when a weight has been replaced, moved or cast, or changed
in place since; any other call runs the stock forward. Writes that bypass the version counter
(through ``.data``, or to a weight created in inference mode, which has none) are not seen: after
such a write, call :func:`prepack_unet` again or move the module (``.to()`` drops the packing).
ComfyUI patches weights by assigning new tensors.

Once packed, a plain weight's memory-mapped pages are given back
(:func:`~mimic_core.files.release_mapped_pages`), so the packed copy takes the plain weight's place
in memory instead of doubling it (unless the weight has been written to since the conversion); the
plain weight stays valid and is read in again if used.
"""

from __future__ import annotations

import torch
from diffusers.models.activations import GEGLU
from torch import nn

from .files import release_mapped_pages


def _packable(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a packed oneDNN call serves: float32 on the CPU, with autograd not recording."""
    tensors = [input, weight] + ([bias] if bias is not None else [])
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def _state(tensor: torch.Tensor | None) -> tuple | None:
    """What identifies a tensor's current values: its address, version counter and shape."""
    if tensor is None:
        return None
    return tensor.data_ptr(), None if tensor.is_inference() else tensor._version, tuple(tensor.shape)


class _Prepacked:
    """Bookkeeping shared by the packed layers: what the weights were when packed, and when converted."""

    _packed: tuple | None = None
    """The packed tensors and the :func:`_state` of the plain weight and bias they were packed from."""
    _as_converted: tuple | None = None
    """The plain weight's :func:`_state` at conversion: while it holds, nothing has written to the
    weight in place, so its mapped pages still equal the file's and may be given back."""

    def _plain(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def _pack(self, input: torch.Tensor) -> tuple:
        raise NotImplementedError

    def _packed_tensors(self, input: torch.Tensor) -> tuple:
        weight, bias = self._plain()
        source = (_state(weight), _state(bias))
        if self._packed is None or self._packed[1] != source:
            self._packed = (self._pack(input), source)
            if source[0] == self._as_converted:
                release_mapped_pages([weight])
        return self._packed[0]

    def _convert(self) -> None:
        self._packed = None
        self._as_converted = _state(self._plain()[0])

    def _apply(self, fn, recurse=True):
        self._packed = None  # moved or cast: the next forward packs what the weights have become
        return super()._apply(fn, recurse)


class PrepackedConv2d(_Prepacked, nn.Conv2d):
    """``nn.Conv2d`` whose CPU float32 inference runs on a weight packed once for oneDNN."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4 or not _packable(input, self.weight, self.bias):
            return super().forward(input)
        (weight,) = self._packed_tensors(input)
        return torch.ops.mkldnn._convolution_pointwise(
            input, weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "none", [], "")

    def _plain(self):
        return self.weight, self.bias

    def _pack(self, input):
        return (torch.ops.mkldnn._reorder_convolution_weight(
            self.weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
            list(input.shape)),)


class PrepackedGEGLU(_Prepacked, GEGLU):
    """diffusers' ``GEGLU`` whose CPU float32 inference runs as two oneDNN products on packed weights."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not _packable(hidden_states, self.proj.weight, self.proj.bias):
            return super().forward(hidden_states, *args, **kwargs)
        value_weight, value_bias, gate_weight, gate_bias = self._packed_tensors(hidden_states)
        rows = hidden_states.reshape(-1, hidden_states.shape[-1])
        gate = torch.ops.mkldnn._linear_pointwise(rows, gate_weight, gate_bias, "gelu", [], "none")
        out = torch.ops.mkldnn._linear_pointwise.binary(rows, gate, value_weight, value_bias, "mul")
        return out.view(*hidden_states.shape[:-1], out.shape[-1])

    def _plain(self):
        return self.proj.weight, self.proj.bias

    def _pack(self, hidden_states):
        rows = hidden_states.numel() // hidden_states.shape[-1]
        value, gate = (half.contiguous() for half in self.proj.weight.detach().chunk(2))
        value_bias, gate_bias = (self.proj.bias.detach().chunk(2) if self.proj.bias is not None else (None, None))
        return (torch.ops.mkldnn._reorder_linear_weight(value, rows), value_bias,
                torch.ops.mkldnn._reorder_linear_weight(gate, rows), gate_bias)


def prepacks(module: nn.Module) -> bool:
    """Whether a packed layer computes this module's function: a plain zero-padded ``nn.Conv2d``
    with numeric padding or a plain ``GEGLU`` (not a subclass, whose forward may differ)."""
    if not torch.backends.mkldnn.is_available():
        return False
    if type(module) is nn.Conv2d:
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return type(module) is GEGLU


PACKED = {nn.Conv2d: PrepackedConv2d, GEGLU: PrepackedGEGLU}


def prepack_unet(module: nn.Module) -> int:
    """Make every plain ``nn.Conv2d`` and ``GEGLU`` in ``module`` its packed kind (and make those that
    already are pack afresh at their next forward); returns how many layers are packed."""
    converted = 0
    for layer in module.modules():
        if prepacks(layer):
            layer.__class__ = PACKED[type(layer)]
        if isinstance(layer, _Prepacked):
            layer._convert()
            converted += 1
    return converted
