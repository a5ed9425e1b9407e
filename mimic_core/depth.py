"""Depth Anything for MimicBrush's shape control, on transformers' ``DepthAnythingForDepthEstimation``.

MimicBrush ships ``depth_model/depth_anything_vitb14.pth``: Depth Anything V1 (ViT-B/14) in the
original repository's key layout (``pretrained.*`` = DINOv2, ``depth_head.*`` = DPT head). The
transformers model computes the same function once the keys are renamed, so no model code is
vendored here: :func:`load_depth_model` renames the original keys (the same renaming as
transformers' own Depth Anything conversion script), infers the configuration from the tensor
shapes, and loads strictly. A transformers-format folder (``config.json`` + ``model.safetensors``,
V1 or V2) is loaded with ``from_pretrained`` instead.

The preprocessing reproduces the authors' demo exactly, including its quirk: the ImageNet
mean/std are applied to the 0..255 values and the result is then divided by 255. The released
weights were trained with that input, so "fixing" it would change the depth maps.
"""

from __future__ import annotations

import logging
import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import torch
from safetensors import SafetensorError
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
from transformers.utils import logging as transformers_logging

from .errors import InputError, ModelFileError
from .files import load_state_dict_file, read_json, refuse_text_in_place_of_model

logger = logging.getLogger(__name__)

__all__ = [
    "load_depth_model",
    "depth_resize",
    "depth_input_from_image",
    "depth_output_size",
    "estimate_depth",
    "DEPTH_SIZE",
    "DEPTH_MULTIPLE",
]

#: Lower bound of the depth input's short side, and the multiple both sides are rounded to.
DEPTH_SIZE = 518
DEPTH_MULTIPLE = 14

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_WHERE_TO_GET = (
    "MimicBrush's depth model is in the MimicBrush release on Hugging Face 'xichenhku/MimicBrush' "
    "(file 'depth_model/depth_anything_vitb14.pth') and on ModelScope 'xichen/MimicBrush'. "
    "A transformers-format Depth Anything folder (config.json + model.safetensors) also works."
)

_NOT_ORIGINAL = "is not a Depth Anything V1 checkpoint in the original layout (pretrained.* + depth_head.*)"

_PICKLE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}


# ---------------------------------------------------------------------------------------------
# Loading


def load_depth_model(
    path: str | Path,
    *,
    config: Mapping[str, Any] | str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> DepthAnythingForDepthEstimation:
    """Load a frozen Depth Anything model (eval mode, no gradients) from ``path``.

    ``path`` is either
      * a weight file (``.pth``/``.pt``/``.bin``/``.ckpt`` read without executing pickled code,
        or ``.safetensors``) in the ORIGINAL Depth Anything V1 key layout, such as the authors'
        ``depth_anything_vitb14.pth``; or
      * a transformers-format folder holding ``config.json`` and ``model.safetensors``
        (Depth Anything V1 or V2, any size), loaded offline.

    For an original-layout file everything but the number of attention heads is inferred from
    tensor shapes. The head count comes from ``config`` (a dict or JSON file in the original
    repository's format, e.g. ``{"vit": {"num_heads": 12, ...}, ...}``), else from a sidecar
    ``<stem>_config.json`` next to the weights, else ``embed_dim // 64`` (right for ViT-S/B/L).
    ``config`` is ignored for transformers folders, which carry their own configuration.

    Raises ModelFileError naming the path, what was expected and where to get the file.
    """
    path = Path(path)
    if path.is_dir():
        if config is not None:
            logger.info("Ignoring the depth config given for '%s': the folder has its own config.json.", path)
        model = _load_hf_folder(path, dtype)
    elif path.is_file():
        model = _load_original_file(path, config)
    else:
        raise ModelFileError(
            f"Depth model not found at '{path}'. Expected the Depth Anything V1 weight file "
            f"'depth_anything_vitb14.pth' or a transformers Depth Anything folder. {_WHERE_TO_GET}"
        )
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


@contextmanager
def _without_progress_bar():
    """transformers draws a "Loading weights" bar over a load that takes a blink: nothing to act on.
    Turned off for the load only; the user's own setting is restored after it."""
    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def _load_hf_folder(folder: Path, dtype: torch.dtype) -> DepthAnythingForDepthEstimation:
    """``from_pretrained`` on a local folder, offline, safetensors only, every key accounted for."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        pth_files = sorted(p.name for p in folder.glob("*.pth"))
        hint = f" It holds {', '.join(pth_files)}: pass that file instead." if pth_files else ""
        raise ModelFileError(
            f"'{folder}' is a folder without config.json, so it is not a transformers Depth Anything "
            f"model folder.{hint} {_WHERE_TO_GET}"
        )
    for weights in folder.glob("*.safetensors"):
        refuse_text_in_place_of_model(weights)
    hf_config = read_json(config_file)
    if hf_config.get("model_type") != "depth_anything":
        raise ModelFileError(
            f"'{config_file}' describes a '{hf_config.get('model_type')}' model, not a Depth Anything "
            f"model (model_type 'depth_anything'). {_WHERE_TO_GET}"
        )
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        raise ModelFileError(
            f"'{folder}' has config.json but no model.safetensors (pickled weights are not loaded). "
            f"{_WHERE_TO_GET}"
        )
    try:
        with _without_progress_bar():
            model, info = DepthAnythingForDepthEstimation.from_pretrained(
                str(folder),
                local_files_only=True,
                use_safetensors=True,
                dtype=dtype,
                output_loading_info=True,
            )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as err:
        raise ModelFileError(
            f"'{folder}' could not be loaded as a transformers Depth Anything model "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__}). The files are probably "
            f"truncated or corrupt. {_WHERE_TO_GET}"
        ) from err
    problems = {
        name: sorted(str(key) for key in info.get(name) or ())
        for name in ("missing_keys", "unexpected_keys", "mismatched_keys")
        if info.get(name)
    }
    if problems:
        detail = "; ".join(f"{name}: {_first_few(keys)}" for name, keys in problems.items())
        raise ModelFileError(
            f"'{folder}' does not match its own config.json ({detail}). {_WHERE_TO_GET}"
        )
    logger.info("Loaded Depth Anything from transformers folder '%s'.", folder)
    return model


def _load_original_file(
    path: Path, config: Mapping[str, Any] | str | Path | None
) -> DepthAnythingForDepthEstimation:
    """Rename, infer the config, and load strictly into a model built on the meta device (no
    random initialisation of a model whose every tensor is about to be replaced)."""
    if path.suffix != ".safetensors" and path.suffix not in _PICKLE_SUFFIXES:
        raise ModelFileError(
            f"'{path}' has an unknown extension; expected a .pth or .safetensors Depth Anything file. "
            f"{_WHERE_TO_GET}"
        )
    try:
        state_dict = load_state_dict_file(path)
    except ModelFileError as err:
        raise ModelFileError(f"{err} {_WHERE_TO_GET}") from err

    if state_dict and all(k.startswith(("backbone.", "neck.", "head.")) for k in state_dict):
        raise ModelFileError(
            f"'{path}' holds transformers-format Depth Anything weights. Pass the folder that holds it "
            f"together with its config.json instead of the file."
        )
    orig_config, config_source = _original_config(path, config)
    hf_config = _infer_config(state_dict, orig_config, config_source, path)
    hf_state = _rename_original_keys(state_dict)

    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(hf_config)
    hf_state = _match_model_key_names(hf_state, set(model.state_dict()))

    expected = set(model.state_dict())
    missing = sorted(expected - set(hf_state))
    unexpected = sorted(set(hf_state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({_first_few(missing)})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({_first_few(unexpected)})")
        raise ModelFileError(
            f"'{path}' {_NOT_ORIGINAL}: after renaming to transformers names, {'; '.join(parts)}. "
            f"{_WHERE_TO_GET}"
        )
    try:
        model.load_state_dict(hf_state, strict=True, assign=True)
    except RuntimeError as err:
        raise ModelFileError(
            f"'{path}' {_NOT_ORIGINAL}: its tensors do not fit the inferred architecture "
            f"({str(err).strip().splitlines()[-1].strip()}). {_WHERE_TO_GET}"
        ) from err
    leftovers = [name for name, t in model.state_dict().items() if t.is_meta]
    if leftovers:  # cannot happen after a strict load; guards against silent garbage
        raise ModelFileError(f"'{path}': tensors left uninitialised after loading: {_first_few(leftovers)}")
    bb = hf_config.backbone_config
    logger.info(
        "Loaded Depth Anything from original-layout file '%s' (embed %d, %d blocks, %d heads, "
        "out_indices %s, features %d, head config from %s).",
        path, bb.hidden_size, bb.num_hidden_layers, bb.num_attention_heads, list(bb.out_indices),
        hf_config.fusion_hidden_size, config_source,
    )
    return model


def _first_few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(str(k) for k in keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _original_config(
    path: Path, config: Mapping[str, Any] | str | Path | None
) -> tuple[dict | None, str]:
    """The original-format config (or None) and a description of where it came from."""
    if config is None:
        sidecar = path.with_name(f"{path.stem}_config.json")
        if sidecar.is_file():
            return read_json(sidecar), f"'{sidecar}'"
        return None, "tensor shapes (num_heads = embed_dim // 64)"
    if isinstance(config, Mapping):
        return dict(config), "the config passed in"
    config_path = Path(config)
    if not config_path.is_file():
        raise ModelFileError(f"Depth model config not found at '{config_path}'.")
    return read_json(config_path), f"'{config_path}'"


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state_dict:
        raise ModelFileError(f"'{path}' {_NOT_ORIGINAL}: it has no '{key}'. {_WHERE_TO_GET}")
    return tuple(state_dict[key].shape)


def _infer_config(
    state_dict: Mapping[str, torch.Tensor], orig: dict | None, source: str, path: Path
) -> DepthAnythingConfig:
    """transformers config of an original-layout checkpoint, from its tensor shapes (+ head count)."""
    try:
        cls_shape = _shape(state_dict, "pretrained.cls_token", path)
        embed_dim = cls_shape[-1]
        patch_w = _shape(state_dict, "pretrained.patch_embed.proj.weight", path)
        patch_size = patch_w[-1]
        num_pos = _shape(state_dict, "pretrained.pos_embed", path)[1]
        block_ids = sorted(
            {int(m.group(1)) for k in state_dict if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k))}
        )
        if not block_ids or block_ids != list(range(len(block_ids))):
            raise ModelFileError(
                f"'{path}' {_NOT_ORIGINAL}: transformer blocks are missing or numbered {block_ids[:8]}. "
                f"{_WHERE_TO_GET}"
            )
        depth = len(block_ids)
        fc1 = _shape(state_dict, "pretrained.blocks.0.mlp.fc1.weight", path)
        out_channels = [_shape(state_dict, f"depth_head.projects.{i}.weight", path)[0] for i in range(4)]
        features = _shape(state_dict, "depth_head.scratch.layer1_rn.weight", path)[0]
        head_hidden = _shape(state_dict, "depth_head.scratch.output_conv2.0.weight", path)[0]
    except (IndexError, TypeError) as err:
        raise ModelFileError(f"'{path}' {_NOT_ORIGINAL}: unexpected tensor shapes ({err}). {_WHERE_TO_GET}") from err

    grid = math.isqrt(max(num_pos - 1, 0))
    if grid * grid != num_pos - 1 or fc1[0] % embed_dim:
        raise ModelFileError(
            f"'{path}' {_NOT_ORIGINAL}: {num_pos} position embeddings / MLP width {fc1[0]} for "
            f"embed dim {embed_dim} make no DINOv2 ViT. {_WHERE_TO_GET}"
        )
    image_size = grid * patch_size
    mlp_ratio = fc1[0] // embed_dim

    vit = dict((orig or {}).get("vit") or {})
    head = dict((orig or {}).get("head") or {})
    # What the config says must agree with the tensors; a mismatch means the wrong config file.
    checks = [
        ("vit.embed_dim", vit.get("embed_dim"), embed_dim),
        ("vit.depth", vit.get("depth"), depth),
        ("vit.patch_size", vit.get("patch_size"), patch_size),
        ("head.features", head.get("features"), features),
        ("head.out_channels", head.get("out_channels"), out_channels),
        ("head_features_2", (orig or {}).get("head_features_2"), head_hidden),
    ]
    for name, said, found in checks:
        if said is not None and (list(said) if isinstance(said, (list, tuple)) else said) != found:
            raise ModelFileError(
                f"The depth config from {source} says {name} = {said}, but the weights in '{path}' "
                f"have {found}: the config does not belong to these weights."
            )
    if head.get("use_clstoken"):
        raise ModelFileError(
            f"The depth config from {source} uses the class token in the head (use_clstoken), which "
            f"transformers' Depth Anything does not implement; MimicBrush's model does not use it."
        )

    num_heads = vit.get("num_heads")
    if num_heads is None and orig is not None:
        num_heads = (orig.get("backbone_config") or {}).get("num_attention_heads")
    if num_heads is None:
        num_heads = embed_dim // 64
        logger.info("No depth config for '%s'; assuming %d attention heads (embed_dim // 64).", path, num_heads)
    if not isinstance(num_heads, int) or num_heads < 1 or embed_dim % num_heads:
        raise ModelFileError(
            f"Cannot use {num_heads} attention heads with embed dim {embed_dim} for '{path}'. Put the "
            f"original config (with vit.num_heads) next to the weights as '{path.stem}_config.json' "
            f"or pass it as config."
        )

    # V1 feeds the DPT head the last four blocks (get_intermediate_layers(x, 4)); transformers
    # counts stages from 1 (stage 0 is the embedding), so block b (0-based) is stage b + 1.
    layers = (orig or {}).get("intermediate_layers", 4)
    if isinstance(layers, (list, tuple)):
        out_indices = [int(i) + 1 for i in layers]
    else:
        out_indices = list(range(depth - int(layers) + 1, depth + 1))
    if len(out_indices) != 4 or min(out_indices) < 1 or max(out_indices) > depth:
        raise ModelFileError(
            f"The depth config from {source} asks for intermediate layers {layers}; the DPT head needs "
            f"four of the {depth} blocks."
        )

    backbone = Dinov2Config(
        hidden_size=embed_dim,
        num_hidden_layers=depth,
        num_attention_heads=num_heads,
        mlp_ratio=mlp_ratio,
        image_size=image_size,
        patch_size=patch_size,
        qkv_bias="pretrained.blocks.0.attn.qkv.bias" in state_dict,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        out_indices=out_indices,
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=patch_size,
        reassemble_hidden_size=embed_dim,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=out_channels,
        fusion_hidden_size=features,
        head_hidden_size=head_hidden,
        depth_estimation_type="relative",
    )


# Original key -> transformers 4.x checkpoint key (as written by transformers' conversion script).
# scratch.layerN_rn and scratch.refinenetN are handled in _rename_one (index shift, order reversed).
_RENAMES: list[tuple[str, str]] = [
    (r"^pretrained\.cls_token$", "backbone.embeddings.cls_token"),
    (r"^pretrained\.mask_token$", "backbone.embeddings.mask_token"),
    (r"^pretrained\.pos_embed$", "backbone.embeddings.position_embeddings"),
    (r"^pretrained\.patch_embed\.proj\.", "backbone.embeddings.patch_embeddings.projection."),
    (r"^pretrained\.blocks\.(\d+)\.ls1\.gamma$", r"backbone.encoder.layer.\1.layer_scale1.lambda1"),
    (r"^pretrained\.blocks\.(\d+)\.ls2\.gamma$", r"backbone.encoder.layer.\1.layer_scale2.lambda1"),
    (r"^pretrained\.blocks\.(\d+)\.attn\.proj\.", r"backbone.encoder.layer.\1.attention.output.dense."),
    (r"^pretrained\.blocks\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.", r"backbone.encoder.layer.\1.\2."),
    (r"^pretrained\.norm\.", "backbone.layernorm."),
    (r"^depth_head\.projects\.(\d)\.", r"neck.reassemble_stage.layers.\1.projection."),
    (r"^depth_head\.resize_layers\.([013])\.", r"neck.reassemble_stage.layers.\1.resize."),
    (r"^depth_head\.scratch\.output_conv1\.", "head.conv1."),
    (r"^depth_head\.scratch\.output_conv2\.0\.", "head.conv2."),
    (r"^depth_head\.scratch\.output_conv2\.2\.", "head.conv3."),
]
_RESIDUAL = {"resConfUnit1": "residual_layer1", "resConfUnit2": "residual_layer2", "conv1": "convolution1",
             "conv2": "convolution2", "out_conv": "projection"}

# transformers 4.x names and what transformers 5.x calls the same tensors.
_HF_ALIASES = [
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
]


def _rename_one(key: str) -> str:
    """transformers 4.x name of an original key; unknown keys are returned unchanged."""
    m = re.match(r"^depth_head\.scratch\.layer([1-4])_rn\.weight$", key)
    if m:
        return f"neck.convs.{int(m.group(1)) - 1}.weight"
    m = re.match(r"^depth_head\.scratch\.refinenet([1-4])\.(.*)$", key)
    if m:
        # The original fuses from the deepest level (refinenet4) first; transformers numbers its
        # fusion layers in that order of execution.
        rest = ".".join(_RESIDUAL.get(part, part) for part in m.group(2).split("."))
        return f"neck.fusion_stage.layers.{4 - int(m.group(1))}.{rest}"
    for pattern, replacement in _RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return key


def _rename_original_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original keys to transformers 4.x names; split the fused qkv projection in thirds."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        m = re.match(r"^pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if m:
            block, kind = m.groups()
            if tensor.shape[0] % 3:
                out[key] = tensor  # reported as unexpected
                continue
            for name, part in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                out[f"backbone.encoder.layer.{block}.attention.attention.{name}.{kind}"] = part
            continue
        out[_rename_one(key)] = tensor
    return out


def _match_model_key_names(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Use the attention key names the installed transformers actually has (4.x or 5.x)."""
    out = {}
    for key, tensor in state.items():
        if key not in model_keys:
            for old, new in _HF_ALIASES:
                for a, b in ((old, new), (new, old)):
                    if a in key and key.replace(a, b) in model_keys:
                        key = key.replace(a, b)
                        break
        out[key] = tensor
    return out


# ---------------------------------------------------------------------------------------------
# Preprocessing and inference


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            f"The depth input must be an HxWx3 RGB image array; got "
            f"{getattr(image, 'shape', type(image).__name__)}."
        )
    if image.dtype != np.uint8:
        raise InputError(f"The depth input must be uint8 (0..255); got {image.dtype}.")
    if min(image.shape[:2]) < 1:
        raise InputError(f"The depth input is empty ({image.shape[1]}x{image.shape[0]}).")
    return image


def _constrain_to_multiple(x: float, min_val: int) -> int:
    """Depth Anything's ``Resize.constrain_to_multiple_of``: round (half to even), else ceil."""
    y = int(np.round(x / DEPTH_MULTIPLE) * DEPTH_MULTIPLE)
    if y < min_val:
        y = int(np.ceil(x / DEPTH_MULTIPLE) * DEPTH_MULTIPLE)
    return y


def depth_output_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the depth input for an image of that size (lower bound 518, multiple of 14)."""
    scale = max(DEPTH_SIZE / height, DEPTH_SIZE / width)
    return (
        _constrain_to_multiple(scale * height, DEPTH_SIZE),
        _constrain_to_multiple(scale * width, DEPTH_SIZE),
    )


def depth_resize(image: np.ndarray) -> np.ndarray:
    """The authors' resize of the uint8 RGB depth input: aspect kept, short side >= 518, sides
    multiples of 14, OpenCV bicubic on the uint8 image. A square image always becomes 518x518."""
    image = _check_image(image)
    new_h, new_w = depth_output_size(*image.shape[:2])
    return cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_CUBIC)


def depth_input_from_image(image: np.ndarray) -> torch.Tensor:
    """Depth model input [1, 3, H', W'] float32 from an HxWx3 uint8 RGB image, as the authors do it.

    After :func:`depth_resize`, ImageNet mean/std are applied to the 0..255 values in float64,
    the result is cast to float32 (CHW, contiguous) and divided by 255. That is not the usual
    normalisation, but it is what the released MimicBrush weights were trained with.
    """
    resized = depth_resize(image)
    normed = (resized - np.array(_IMAGENET_MEAN)) / np.array(_IMAGENET_STD)  # float64
    chw = np.ascontiguousarray(np.transpose(normed, (2, 0, 1))).astype(np.float32)
    return torch.from_numpy(chw).unsqueeze(0) / 255


def estimate_depth(model: DepthAnythingForDepthEstimation, pixel_values: torch.Tensor) -> torch.Tensor:
    """``predicted_depth`` [B, H', W'] of ``pixel_values`` [B, 3, H', W'] (relative inverse depth,
    unnormalised, non-negative), in the model's dtype and on its device. Shape control "off" in
    MimicBrush means running this on an all-zero input, not using a zero depth map."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise InputError(
            f"Depth model input must be a [B, 3, H, W] tensor; got "
            f"{tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__}."
        )
    patch = model.config.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    h, w = pixel_values.shape[-2:]
    if h % patch or w % patch:
        raise InputError(f"Depth model input sides must be multiples of {patch}; got {h}x{w}.")
    param = next(model.parameters())
    with torch.no_grad():
        out = model(pixel_values=pixel_values.to(device=param.device, dtype=param.dtype))
    return out.predicted_depth
