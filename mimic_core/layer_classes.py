"""Giving layers of a stock class a subclass that computes the same function another way."""

from __future__ import annotations

from torch import nn


def replace_layer_class(module: nn.Module, stock: type[nn.Module], replacement: type[nn.Module]) -> int:
    """Make every layer in ``module`` whose class is exactly ``stock`` (not a subclass, whose forward
    may differ) a ``replacement``, a subclass with the same parameters and state dict; returns how
    many layers are ``replacement`` after it."""
    replaced = 0
    for layer in module.modules():
        if type(layer) is stock:
            layer.__class__ = replacement
        replaced += isinstance(layer, replacement)
    return replaced
