"""Convolution weights packed once for oneDNN, for the U-Nets on the CPU.

PyTorch's CPU convolution hands oneDNN the weight in PyTorch's layout, and oneDNN reorders it into
its blocked layout on every call. Where a convolution does little arithmetic for the size of its
weight, as the U-Nets' 1280- and 2560-channel convolutions at 8x8 and 16x16 latents do, that
reorder costs as much as the convolution itself. Packed once, those run 1.5-2.6x faster on the
same oneDNN kernel, with the same result.

:func:`prepack_convolutions` turns a module's ``nn.Conv2d`` layers into :class:`PrepackedConv2d`:
same parameters, same state dict, same function. The packed weight is made at the first forward
that can use it (a float32 input on the CPU, autograd not recording) and made again when the
weight has been replaced, moved or cast, or changed in place since; any other call runs the stock
forward. (A weight created in inference mode carries no version counter, so an in-place write to
it is not seen; hosts that patch weights, ComfyUI among them, assign new tensors instead.) Once
packed, the plain weight's memory-mapped pages are given back
(:func:`~mimic_core.files.release_mapped_pages`), so the packed copy takes the plain weight's place
in memory instead of doubling it; the plain weight stays valid and is read in again if used.
"""

from __future__ import annotations

import torch
from torch import nn

from .files import release_mapped_pages


class PrepackedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose CPU float32 inference runs on a weight packed once for oneDNN."""

    _packed: tuple[torch.Tensor, tuple[int, int, int]] | None = None
    """The packed weight and what it was packed from: the weight's address, version and shape."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._packable(input):
            return super().forward(input)
        return torch.ops.mkldnn._convolution_pointwise(
            input, self._packed_weight(input), self.bias, list(self.padding), list(self.stride),
            list(self.dilation), self.groups, "none", [], "")

    def _packable(self, input: torch.Tensor) -> bool:
        weight = self.weight
        return (input.device.type == "cpu" and weight.device.type == "cpu" and input.dtype == torch.float32
                and weight.dtype == torch.float32 and input.dim() == 4
                and (self.bias is None or self.bias.dtype == torch.float32)
                and not (torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad
                                                      or (self.bias is not None and self.bias.requires_grad))))

    def _packed_weight(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        version = None if weight.is_inference() else weight._version
        source = (weight.data_ptr(), version, tuple(weight.shape))
        if self._packed is None or self._packed[1] != source:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(input.shape))
            self._packed = (packed, source)
            if not version:  # never written in place, so its pages still equal the file's
                release_mapped_pages([weight])
        return self._packed[0]

    def _apply(self, fn, recurse=True):
        self._packed = None  # moved or cast: the next forward packs what the weight has become
        return super()._apply(fn, recurse)


def prepacks(conv: nn.Module) -> bool:
    """Whether :class:`PrepackedConv2d` computes this module's function: a plain zero-padded
    ``nn.Conv2d`` with numeric padding (not a subclass, whose forward may differ)."""
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and torch.backends.mkldnn.is_available())


def prepack_convolutions(module: nn.Module) -> int:
    """Make every plain ``nn.Conv2d`` in ``module`` a :class:`PrepackedConv2d`; returns how many."""
    converted = 0
    for conv in module.modules():
        if prepacks(conv):
            conv.__class__ = PrepackedConv2d
            converted += 1
    return converted

