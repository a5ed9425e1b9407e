"""The U-Nets' weights packed side by side for an edit's working size, before its first step.

A packed layer (:mod:`mimic_core.prepacked`) packs its weight at its first call, which is inside
the first sampling step: layer after layer, each by oneDNN's reorder (on the Intel CPU measured, on
one thread while the other core waited). Which layers pack, and for what input, follows from the
U-Nets' configs and the working size alone. So a forward of each U-Net's architecture on the meta
device (shapes only: no weights, no arithmetic, a fraction of a second) finds every layer's input
as the edit gives it, and the layers are packed before the first step, as many at a time as torch
has threads (:meth:`~mimic_core.models.MimicBrushModels.pack_for`, once per U-Net and working
size), each convolution's weight first laid out channels-last in a buffer kept from layer to layer,
from which it packs faster (:func:`~mimic_core.prepacked.channels_last_in`). Not while loading: the
working size is the edit's choice, and loading stays a read of the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue
from typing import TYPE_CHECKING

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .attention import last_recorded_block
from .prepacked import PackedWeight, PrepackedConv2d, packs_dtype

if TYPE_CHECKING:
    from .models import MimicBrushModels


class _PassEnds(Exception):
    """Ends a meta pass where the real one stops."""


def layer_input_shapes(unet: UNet2DConditionModel, sample_shape: tuple[int, ...], context_shape: tuple[int, ...],
                       stop_at: str | None = None) -> dict[str, torch.Size]:
    """The input shape of each convolution and linear layer that a forward of ``unet`` on a sample
    of ``sample_shape`` and a context of ``context_shape`` calls, by module path. The forward runs on
    a copy of its architecture on the meta device; with ``stop_at``, it ends when that module is
    called, as the reference U-Net's ends in its last recorded block.

    The copy's GroupNorm and LayerNorm layers pass their input on as it is: a normalisation keeps its
    input's shape, and on the meta device it runs as a Python decomposition, about a third of the pass
    (both SD-1.5-size U-Nets at 512, on a 2-core AMD EPYC: 0.41-0.85 s against 0.64-0.99 s over twelve
    passes each, a process's first 0.57-0.64 s against 0.68-0.72 s)."""
    with torch.device("meta"):
        skeleton = UNet2DConditionModel.from_config(unet.config)
    for module in skeleton.modules():
        if type(module) in (nn.GroupNorm, nn.LayerNorm):
            module.forward = _same_shape
    shapes: dict[str, torch.Size] = {}

    def record(name: str, args: tuple) -> None:
        shapes.setdefault(name, args[0].shape)

    for name, module in skeleton.named_modules():
        if type(module) in (nn.Conv2d, nn.Linear):
            module.register_forward_pre_hook(lambda module, args, _name=name: record(_name, args))
    if stop_at is not None:
        skeleton.get_submodule(stop_at).register_forward_pre_hook(lambda *args: _raise_pass_ends())
    sample = torch.empty(sample_shape, device="meta")
    context = torch.empty(context_shape, device="meta")
    try:
        skeleton(sample, torch.zeros((), device="meta"), encoder_hidden_states=context)
    except _PassEnds:
        pass
    return shapes


def _raise_pass_ends() -> None:
    raise _PassEnds


def _same_shape(input: torch.Tensor) -> torch.Tensor:
    return input


U_NETS = ("unet", "referencenet")
"""The U-Nets an edit packs for, by their names in :class:`~mimic_core.models.MimicBrushModels`."""


def edit_input_shapes(models: MimicBrushModels, working_size: int,
                      parts: Sequence[str] = U_NETS) -> list[tuple[nn.Module, torch.Size]]:
    """Each layer of the U-Nets named in ``parts`` that an exact edit at ``working_size`` calls, with its
    input's shape: the imitative U-Net (``"unet"``) on guidance's two rows, the reference U-Net
    (``"referencenet"``) on one row up to the self-attention of its last recorded block
    (:mod:`mimic_core.attention`), both with the image encoder's tokens as context."""
    latent = models.latent_size(working_size)
    encoder = models.image_encoder.config
    tokens = (encoder.image_size // encoder.patch_size) ** 2 + 1
    passes = {"unet": (models.unet, 2, None),
              "referencenet": (models.referencenet, 1, last_recorded_block(models.referencenet) + ".attn1")}
    calls = []
    for unet, rows, stop_at in (passes[part] for part in parts):
        shapes = layer_input_shapes(unet, (rows, unet.config.in_channels, latent, latent),
                                    (rows, tokens, unet.config.cross_attention_dim), stop_at)
        calls += [(unet.get_submodule(name), shape) for name, shape in shapes.items()]
    return calls


def pack_for_working_size(models: MimicBrushModels, working_size: int, threads: int | None = None,
                          parts: Sequence[str] = U_NETS) -> int:
    """Pack every weight of the U-Nets named in ``parts`` that an exact edit at ``working_size``
    runs packed, ``threads`` layers at a time (default: torch's thread count), largest first;
    returns how many layers were packed. Nothing packs off the CPU, in a dtype no layer packs in or
    with stock layers (training's), and the meta pass is then skipped."""
    if (models.device.type != "cpu" or not packs_dtype(models.dtype)
            or not any(isinstance(layer, PackedWeight) for layer in models.unet.modules())):
        return 0
    layers = [(layer, shape) for layer, shape in edit_input_shapes(models, working_size, parts)
              if isinstance(layer, PackedWeight)]
    layers.sort(key=lambda call: -call[0].weight.numel())
    workers = threads or torch.get_num_threads()
    # a staging buffer per worker (prepacked.channels_last_in), kept from layer to layer: 2 x 118 MB at SD-1.5 size
    staging: SimpleQueue[torch.Tensor] = SimpleQueue()
    largest = max((layer.weight.nbytes for layer, _ in layers if isinstance(layer, PrepackedConv2d)), default=0)
    for _ in range(workers):
        staging.put(torch.empty(largest, dtype=torch.uint8))

    def pack(call: tuple[PackedWeight, torch.Size]) -> bool:
        buffer = staging.get()
        try:
            return call[0].pack_for(call[1], buffer)
        finally:
            staging.put(buffer)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(pack, layers))
