"""Saving trained networks as a MimicBrush checkpoint the engine and the ComfyUI loader read.

Written into one folder: ``mimicbrush.bin`` in the authors' five-part format (a torch pickle of
one dict ``{image_proj, depth_guider, referencenet, image_encoder, unet}`` of float32 state dicts,
the reference U-Net without the keys the authors' file lacks, CLIP with its ``position_ids``),
``<part>_config.json`` for each part (the ``--config-dir`` of a ``.bin``), and
``mimicbrush.safetensors``, the engine's self-describing conversion made by
:func:`mimic_core.checkpoint.convert_checkpoint`. Each file is written under a temporary name and
renamed into place when complete.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import PARTS, convert_checkpoint
from ..components import reference_unet_optional_keys
from .lora import merged_state_dict

CHECKPOINT_NAME = "mimicbrush"


def _unet_config(unet) -> dict:
    return {key: value for key, value in dict(unet.config).items() if not key.startswith("_") or key == "_class_name"}


def part_configs(parts: dict[str, nn.Module]) -> dict[str, dict]:
    """The architecture of each part, in the form ``checkpoint.read_checkpoint`` reads back."""
    encoder = {key: value for key, value in parts["image_encoder"].config.to_dict().items() if not key.startswith("_")}
    guider = parts["depth_guider"]
    projector = parts["image_proj"].projector
    configs = {
        "unet": _unet_config(parts["unet"]),
        "referencenet": _unet_config(parts["referencenet"]),
        "image_encoder": {k: v for k, v in encoder.items() if k not in ("architectures", "transformers_version", "dtype")},
        "image_proj": {"input_dim": projector.in_features, "output_dim": projector.out_features},
        "depth_guider": {
            "block_out_channels": [guider.conv_in.out_channels] + [block.out_channels for block in guider.blocks[1::2]],
            "conditioning_channels": guider.conv_in.in_channels,
            "conditioning_embedding_channels": guider.conv_out.out_channels,
        },
    }
    return json.loads(json.dumps(configs))  # tuples to lists, FrozenDicts to dicts


def part_state_dicts(parts: dict[str, nn.Module]) -> dict[str, OrderedDict]:
    """float32 CPU state dicts in the authors' layout (LoRA adapters merged)."""
    out = {}
    for part in PARTS:
        module = parts[part]
        state = merged_state_dict(module)
        if part == "referencenet":
            dropped = reference_unet_optional_keys(module)
            state = {key: value for key, value in state.items() if key not in dropped}
        if part == "image_encoder":
            embeddings = module.vision_model.embeddings
            state["vision_model.embeddings.position_ids"] = torch.arange(embeddings.num_positions)[None]
        out[part] = OrderedDict((key, value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype)
                                 .contiguous().clone()) for key, value in state.items())
    return out


def write_text(path: Path, text: str) -> None:
    """Write ``path`` under a temporary name and rename it into place."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(path)


def export_checkpoint(parts: dict[str, nn.Module], folder: Path) -> Path:
    """Write the ``.bin``, the configs and the ``.safetensors`` into ``folder``; returns the latter."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, config in part_configs(parts).items():
        write_text(folder / f"{part}_config.json", json.dumps(config, indent=2, sort_keys=True))
    binary = folder / f"{CHECKPOINT_NAME}.bin"
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.partial")
    try:
        torch.save(part_state_dicts(parts), partial)
        partial.replace(binary)
    finally:
        partial.unlink(missing_ok=True)
    return convert_checkpoint(binary, folder / f"{CHECKPOINT_NAME}.safetensors", config_dir=folder)
