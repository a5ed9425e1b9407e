"""The five networks of a MimicBrush checkpoint, built from stock diffusers/transformers classes.

Modules are created on the meta device and take the checkpoint's tensors by assignment, so a
multi-gigabyte checkpoint is never held twice in memory and no time is spent on random init.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .checkpoint import MimicBrushCheckpoint
from .errors import ModelFileError

DEPTH_GUIDER_INPUT_SIZE = 512

KNOWN_UNETS = {
    (4, 768): "a Stable Diffusion 1.x U-Net", (9, 768): "an SD 1.x inpainting U-Net",
    (4, 1024): "an SD 2.x U-Net", (9, 1024): "an SD 2.x inpainting U-Net",
    (4, 2048): "an SDXL U-Net", (9, 2048): "an SDXL inpainting U-Net",
    (13, 768): "MimicBrush's imitative U-Net",
}
"""Well-known U-Nets by (input channels, cross-attention width): what a misfit U-Net part probably is."""

OTHER_MODEL_FIX = ("Give the MimicBrush checkpoint (xichenhku/MimicBrush on Hugging Face), or, for a MimicBrush of "
                   "another architecture, convert it with 'python -m mimic_core convert --config-dir DIR' giving its "
                   "<part>_config.json files.")


class ImageProjection(nn.Module):
    """Maps CLIP penultimate hidden states to the U-Nets' cross-attention width (no token pooling)."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.projector = nn.Linear(input_dim, output_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.projector(hidden_states)


class DepthGuider(ControlNetConditioningEmbedding):
    """The depth guider: ControlNet's conditioning embedding, fed a depth map resized to 512².

    The released model resizes every depth map to 512x512 (bilinear, corners aligned) first,
    so its output is always 64x64; ``size`` lets a caller pick another working resolution
    (identical at 512).
    """

    def forward(self, depth_map: torch.Tensor, size: int = DEPTH_GUIDER_INPUT_SIZE) -> torch.Tensor:
        if depth_map.ndim == 3:
            depth_map = depth_map.unsqueeze(1)
        depth_map = F.interpolate(depth_map, size=(size, size), mode="bilinear", align_corners=True)
        return super().forward(depth_map)


def reference_unet_optional_keys(unet: UNet2DConditionModel) -> set[str]:
    """Keys a reference U-Net checkpoint lacks, none of which can influence a recorded feature.

    The authors' reference U-Net has no ``conv_norm_out``/``conv_out``, and of its last transformer
    block only ``norm1`` (whose output is what gets recorded) survives, with that attention's
    ``proj_out``.
    """
    last_attention = f"up_blocks.{len(unet.up_blocks) - 1}.attentions.{len(unet.up_blocks[-1].attentions) - 1}"
    last_block = f"{last_attention}.transformer_blocks.{len(unet.up_blocks[-1].attentions[-1].transformer_blocks) - 1}"
    dropped = (
        "conv_norm_out.", "conv_out.", f"{last_attention}.proj_out.",
        f"{last_block}.attn1.", f"{last_block}.norm2.", f"{last_block}.attn2.",
        f"{last_block}.norm3.", f"{last_block}.ff.",
    )
    return {key for key in unet.state_dict() if key.startswith(dropped)}


def _assign_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor], name: str,
                       optional: set[str] = frozenset()) -> nn.Module:
    """Load ``state_dict`` into a meta-device ``module`` strictly, apart from ``optional`` keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong_shape:
        raise ModelFileError(f"The '{name}' weights do not fit its architecture: "
                             f"{_misfit_details(expected, state_dict, missing, unexpected, wrong_shape)}. "
                             f"{_what_the_weights_are(expected, state_dict, unexpected, wrong_shape)}")
    full = dict(state_dict)
    for key in set(expected) - set(state_dict):
        full[key] = torch.zeros(expected[key].shape, dtype=expected[key].dtype)
    module.load_state_dict(full, strict=True, assign=True)
    _materialise_derived_buffers(module, name)
    return module.eval().requires_grad_(False)


def _keys(count: int) -> str:
    return "key" if count == 1 else "keys"


def _misfit_details(expected: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor], missing: list[str],
                    unexpected: list[str], wrong_shape: list[str]) -> str:
    """How many keys are missing, unexpected or of another shape, with the first few of each."""
    details = []
    if missing:
        details.append(f"{len(missing)} missing {_keys(len(missing))} (e.g. {missing[:3]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected {_keys(len(unexpected))} (e.g. {unexpected[:3]})")
    if wrong_shape:
        shapes = " and ".join(f"{key}: file {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
                              for key in wrong_shape[:2])
        details.append(f"{len(wrong_shape)} {_keys(len(wrong_shape))} of another shape (e.g. {shapes})")
    return "; ".join(details)


def _unet_signature(state_dict: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(input channels, cross-attention width) of a diffusers U-Net's tensors; None for another network."""
    conv_in = state_dict.get("conv_in.weight")
    to_k = next((tensor for key, tensor in state_dict.items() if key.endswith("attn2.to_k.weight")), None)
    if conv_in is None or to_k is None or conv_in.ndim != 4 or to_k.ndim != 2:
        return None
    return conv_in.shape[1], to_k.shape[1]


def _what_the_weights_are(expected: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor],
                          unexpected: list[str], wrong_shape: list[str]) -> str:
    """A guess at what the misfit weights are, from how they differ, and the fix that goes with it:
    a U-Net of other inputs or conditioning (an inpainting or SDXL U-Net), a part cut short (every
    tensor it holds fits), or another model or architecture."""
    found, built = _unet_signature(state_dict), _unet_signature(expected)
    if found is not None and built is not None and found != built:
        kind = f" ({KNOWN_UNETS[found]})" if found in KNOWN_UNETS else ""
        return (f"They are a U-Net of {found[0]} input channels and cross-attention width {found[1]}{kind}, where "
                f"this architecture takes {built[0]} and {built[1]}. {OTHER_MODEL_FIX}")
    if not unexpected and not wrong_shape:
        return ("Every tensor they hold fits, so the file is probably cut short (a partial or interrupted save: "
                "download or export it again), or the configs describe a larger architecture than the file's. "
                + OTHER_MODEL_FIX)
    return f"The file is another model, or a MimicBrush of another architecture. {OTHER_MODEL_FIX}"


def _materialise_derived_buffers(module: nn.Module, name: str) -> None:
    """Give real values to buffers that no checkpoint stores (CLIP's ``position_ids``)."""
    for buffer_name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        owner_name, _, attribute = buffer_name.rpartition(".")
        if attribute != "position_ids":
            raise ModelFileError(f"'{name}' has a buffer '{buffer_name}' that no file provides.")
        owner = module.get_submodule(owner_name)
        values = torch.arange(buffer.shape[-1]).expand(buffer.shape)
        owner.register_buffer(attribute, values, persistent=False)


def build_unet(config: dict, state_dict: dict[str, torch.Tensor], name: str,
               reference: bool = False) -> UNet2DConditionModel:
    """A stock ``UNet2DConditionModel``; the reference U-Net may lack the keys it never uses."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    optional = reference_unet_optional_keys(unet) if reference else set()
    return _assign_state_dict(unet, state_dict, name, optional)


def build_image_encoder(config: dict, state_dict: dict[str, torch.Tensor]) -> CLIPVisionModelWithProjection:
    """CLIP's vision tower; the ``position_ids`` buffer old transformers saved is dropped."""
    fields = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}
    clip_config = CLIPVisionConfig(**fields)
    clip_config._attn_implementation = "sdpa"
    with torch.device("meta"):
        encoder = CLIPVisionModelWithProjection(clip_config)
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("embeddings.position_ids")}
    return _assign_state_dict(encoder, state_dict, "image_encoder")


def build_image_projection(state_dict: dict[str, torch.Tensor]) -> ImageProjection:
    """The projection's widths are read off its weight (1280 -> 768 in the release)."""
    weight = state_dict.get("projector.weight")
    if weight is None or weight.ndim != 2:
        raise ModelFileError("The 'image_proj' part has no 2-D 'projector.weight'; not a MimicBrush checkpoint.")
    with torch.device("meta"):
        projection = ImageProjection(weight.shape[1], weight.shape[0])
    return _assign_state_dict(projection, state_dict, "image_proj")


def build_depth_guider(config: dict, state_dict: dict[str, torch.Tensor]) -> DepthGuider:
    with torch.device("meta"):
        guider = DepthGuider(
            conditioning_embedding_channels=config["conditioning_embedding_channels"],
            conditioning_channels=config["conditioning_channels"],
            block_out_channels=tuple(config["block_out_channels"]),
        )
    return _assign_state_dict(guider, state_dict, "depth_guider")


def build_components(checkpoint: MimicBrushCheckpoint) -> dict[str, nn.Module]:
    """All five networks of ``checkpoint``, in float32 on the CPU, eval mode, no gradients."""
    sds, cfgs = checkpoint.state_dicts, checkpoint.configs
    return {
        "unet": build_unet(cfgs["unet"], sds["unet"], "unet"),
        "referencenet": build_unet(cfgs["referencenet"], sds["referencenet"], "referencenet", reference=True),
        "image_encoder": build_image_encoder(cfgs["image_encoder"], sds["image_encoder"]),
        "image_proj": build_image_projection(sds["image_proj"]),
        "depth_guider": build_depth_guider(cfgs["depth_guider"], sds["depth_guider"]),
    }
