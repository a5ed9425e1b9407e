"""Low-rank adapters (peft) for fine-tuning on a small subject set, merged back for export.

Adapters go on the linear layers whose names end in one of ``lora.target_modules`` (default: the
attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of the U-Nets; CLIP's are named
``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``). The base weights stay frozen. The export merges
``W + scale * B @ A`` into plain weights, so the result is an ordinary MimicBrush checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ConfigError, LoraConfig


def add_lora(module: nn.Module, part: str, config: LoraConfig, excluded: set[str]) -> None:
    """Inject adapters into ``module``; ``excluded`` are parameter names whose layers get none
    (layers that cannot influence the loss)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    targets = [
        name for name, layer in module.named_modules()
        if isinstance(layer, nn.Linear) and f"{name}.weight" not in excluded
        and any(name == target or name.endswith(f".{target}") for target in config.target_modules)
    ]
    if not targets:
        raise ConfigError(f"Config key 'lora.target_modules' ({', '.join(config.target_modules)}) names no linear "
                          f"layer of '{part}'; remove '{part}' from lora.parts or name its layers "
                          "(CLIP: q_proj, k_proj, v_proj, out_proj).")
    inject_adapter_in_model(PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=targets), module)


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [parameter for name, parameter in module.named_parameters() if ".lora_" in name]


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict in its plain layout, adapters merged into the base weights.

    Without adapters this is the ordinary state dict. The module itself is not changed.
    """
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer):
            delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
            deltas[f"{name}.weight"] = delta
    merged = {}
    for key, tensor in module.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        merged[key] = tensor + deltas[key].to(tensor.dtype) if key in deltas else tensor
    return merged
