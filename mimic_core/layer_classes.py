"""Giving layers of a stock class a subclass that computes the same function another way in
inference, and the test each such layer makes before it does: whether a call records autograd."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def replace_layer_class(module: nn.Module, stock: type[nn.Module], replacement: type[nn.Module],
                        where: Callable[[nn.Module], bool] | None = None) -> int:
    """Make every layer in ``module`` whose class is exactly ``stock`` (not a subclass, whose forward
    may differ), and for which ``where`` holds if given, a ``replacement``, a subclass with the same
    parameters and state dict; returns how many layers are ``replacement`` after it."""
    replaced = 0
    for layer in module.modules():
        if type(layer) is stock and (where is None or where(layer)):
            layer.__class__ = replacement
        replaced += isinstance(layer, replacement)
    return replaced


def records_autograd(layer: nn.Module, input: torch.Tensor) -> bool:
    """Whether a call of ``layer`` on ``input`` records autograd: gradients enabled, and the input or
    any of the layer's parameters requiring them. Such calls take the stock forward, whose
    gradients autograd knows."""
    return torch.is_grad_enabled() and (input.requires_grad or any(p.requires_grad for p in layer.parameters()))
