"""The VAE's 1x1 convolutions as one matrix product per sample, in float32 CPU inference.

PyTorch hands a 1x1 convolution to oneDNN, which reorders the input into its blocked layout and
computes into a blocked output that it then reorders back: two temporaries the size of the input and
the output beside the result, each a fresh block of up to 268 MB in the VAE at 512², every page
faulted in and zeroed at every call. A 1x1 convolution is the product of the weight (out x in) with
each sample's pixels (in x height*width), which the BLAS computes straight into the result with the
bias added first (``addmm``). On a 2-core AMD EPYC the VAE decoder's 256->128 shortcut at 512x512
took 246 ms against 294 and faulted in 32,769 pages against 131,075; 512->256 at 256x256 154 ms
against 180 (16,385 pages against 65,539); the encoder's two took 0.72 and 0.88 of the stock time. The rounding
differs from oneDNN's (within 7e-7 of the largest output in those measurements).

The VAE only: the U-Nets' 1x1 convolutions (at most 10 MB) measured 1.0-1.24 times oneDNN's time
this way in an earlier session. :func:`pointwise_convolutions` turns a module's plain 1x1
``nn.Conv2d`` layers into :class:`PointwiseConv2d`: same parameters, same state dict; any call other
than float32 CPU inference on a contiguous input of its channels runs the stock forward.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer_classes import records_autograd, replace_layer_class


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` of a 1x1 kernel whose float32 CPU inference runs as a matrix product per sample."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._product_serves(input):
            return super().forward(input)
        batch, channels, height, width = input.shape
        weight = self.weight.view(self.out_channels, channels)
        output = input.new_empty(batch, self.out_channels, height, width)
        for sample in range(batch):
            pixels = input[sample].view(channels, height * width)
            result = output[sample].view(self.out_channels, height * width)
            if self.bias is None:
                torch.mm(weight, pixels, out=result)
            else:
                torch.addmm(self.bias[:, None], weight, pixels, out=result)
        return output

    def _product_serves(self, input: torch.Tensor) -> bool:
        tensors = [input, self.weight] + ([] if self.bias is None else [self.bias])
        return (input.dim() == 4 and input.numel() > 0 and input.is_contiguous() and self.weight.is_contiguous()
                and input.shape[1] == self.in_channels
                and all(t.device.type == "cpu" and t.dtype is torch.float32 for t in tensors)
                and not records_autograd(self, input))


def is_pointwise(layer: nn.Module) -> bool:
    """Whether a layer is a plain ``nn.Conv2d`` (not a subclass, whose forward may differ) of a 1x1
    kernel, stride 1, no padding, dilation or groups."""
    return (type(layer) is nn.Conv2d and layer.kernel_size == (1, 1) and layer.stride == (1, 1)
            and layer.padding == (0, 0) and layer.dilation == (1, 1) and layer.groups == 1)


def pointwise_convolutions(module: nn.Module) -> int:
    """Make every convolution in ``module`` that :func:`is_pointwise` a :class:`PointwiseConv2d`;
    returns how many layers are."""
    return replace_layer_class(module, nn.Conv2d, PointwiseConv2d, where=is_pointwise)
