"""The MimicBrush checkpoint: five state dicts, as the authors' ``.bin`` or our ``.safetensors``.

The authors release ``mimicbrush.bin``, a torch pickle of one dict with the keys ``image_proj``,
``depth_guider``, ``referencenet``, ``image_encoder`` and ``unet``. Its converted form is one
``.safetensors`` file with flat keys under those five prefixes, which loads by memory map and
carries the component configs in its metadata (``<part>_config`` entries), so that a converted
file is self-describing, and the embedding of the blank image-encoder input computed from its
weights (:mod:`mimic_core.blank_embedding`). Where no config is stored, the released
architectures are assumed (SD-1.5 U-Nets, CLIP ViT-H/14).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from .blank_embedding import DERIVED_PREFIX, STORED_KEY, compute_blank_embedding
from .errors import ModelFileError
from .files import load_safetensors, load_torch_pickle, new_file_mode, read_json, require_file

PARTS = ("image_proj", "depth_guider", "referencenet", "image_encoder", "unet")
logger = logging.getLogger(__name__)

FORMAT_NAME = "mimicbrush"
FORMAT_VERSION = "2"
"""2: a float32 file also carries the blank input's embedding (:mod:`mimic_core.blank_embedding`)."""
DOWNLOAD_HINT = (
    "Download mimicbrush/mimicbrush.bin from the Hugging Face repository xichenhku/MimicBrush "
    "(or ModelScope xichen/MimicBrush); convert it once with "
    "'python -m mimic_core convert mimicbrush.bin mimicbrush.safetensors' for faster loading."
)


@dataclass
class MimicBrushCheckpoint:
    """The five state dicts of a checkpoint and the configs that describe their architectures."""

    state_dicts: dict[str, dict[str, torch.Tensor]]
    configs: dict[str, dict]
    path: Path
    blank_embedding: torch.Tensor | None = None
    """The blank input's embedding a converted file carries (:data:`~mimic_core.blank_embedding.STORED_KEY`)."""


def default_config(part: str) -> dict:
    """The released architecture of one part (SD-1.5 U-Nets, ViT-H/14, the 1280->768 projection)."""
    text = resources.files(__package__).joinpath("configs", f"{part}.json").read_text()
    return json.loads(text)


def read_checkpoint(path: str | Path, config_dir: str | Path | None = None) -> MimicBrushCheckpoint:
    """Read a MimicBrush checkpoint (``.bin`` or converted ``.safetensors``) without running code.

    Configs come, per part, from ``config_dir/<part>_config.json`` when given and present, else
    from the file's metadata, else from the released architecture.
    """
    path = require_file(path, "The MimicBrush checkpoint", DOWNLOAD_HINT)
    if config_dir is not None:
        check_config_dir(config_dir)
    blank_embedding = None
    if path.suffix == ".safetensors":
        state_dicts, stored, blank_embedding = _read_flat_safetensors(path)
    else:
        state_dicts, stored = _read_authors_pickle(path), {}
    configs = {}
    for part in PARTS:
        override = Path(config_dir) / f"{part}_config.json" if config_dir is not None else None
        if override is not None and override.is_file():
            configs[part] = read_json(override)
        else:
            configs[part] = stored.get(part) or default_config(part)
    if configs["image_encoder"] != stored.get("image_encoder"):
        blank_embedding = None  # computed under the stored config: another one may compute another function
    return MimicBrushCheckpoint(state_dicts, configs, path, blank_embedding)


def check_config_dir(config_dir: str | Path) -> None:
    """Refuse a config folder that is not one, or that holds no ``<part>_config.json``: a mistyped
    folder would otherwise be passed over for the released architecture, and the weights then fail
    to fit it with advice to give the folder that was given."""
    folder = Path(config_dir)
    if not folder.is_dir():
        raise ModelFileError(f"The config folder '{folder}' is not a folder: give the folder that holds the "
                             "<part>_config.json files of a non-released architecture, or leave it out for the "
                             "released one.")
    if not any((folder / f"{part}_config.json").is_file() for part in (*PARTS, "vae")):
        raise ModelFileError(f"The config folder '{folder}' holds no <part>_config.json file (e.g. unet_config.json): "
                             "give the folder that holds them, or leave it out for the released architecture.")


def _missing_parts_error(path: Path, missing: list[str]) -> ModelFileError:
    return ModelFileError(
        f"'{path}' is not a complete MimicBrush checkpoint: it lacks the part(s) "
        f"{', '.join(repr(p) for p in missing)} (a checkpoint holds {', '.join(PARTS)}). "
        f"It may be another model or an incomplete download. {DOWNLOAD_HINT}"
    )


def _read_authors_pickle(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    loaded = load_torch_pickle(path)
    if not isinstance(loaded, dict):
        raise ModelFileError(f"'{path}' does not hold a dict of state dicts. {DOWNLOAD_HINT}")
    missing = [part for part in PARTS if not isinstance(loaded.get(part), dict) or not loaded[part]]
    if missing:
        raise _missing_parts_error(path, missing)
    return {part: dict(loaded[part]) for part in PARTS}


def _read_flat_safetensors(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict], torch.Tensor | None]:
    tensors, metadata = load_safetensors(path)
    blank_embedding = tensors.pop(STORED_KEY, None)
    # values a later version derives from the weights: not weights, and nothing this version needs
    tensors = {key: tensor for key, tensor in tensors.items() if not key.startswith(DERIVED_PREFIX)}
    state_dicts: dict[str, dict[str, torch.Tensor]] = {part: {} for part in PARTS}
    strays = []
    for key, tensor in tensors.items():
        part, _, rest = key.partition(".")
        if part in state_dicts and rest:
            state_dicts[part][rest] = tensor
        else:
            strays.append(key)
    missing = [part for part in PARTS if not state_dicts[part]]
    if missing:
        raise _missing_parts_error(path, missing)
    if strays:
        raise ModelFileError(
            f"'{path}' holds keys outside the five MimicBrush parts (e.g. {strays[:3]}); "
            f"it is not a MimicBrush checkpoint. {DOWNLOAD_HINT}"
        )
    stored = {}
    for part in PARTS:
        text = metadata.get(f"{part}_config")
        if text:
            try:
                stored[part] = json.loads(text)
            except json.JSONDecodeError as err:
                raise ModelFileError(f"'{path}' has an unreadable stored config for '{part}': {err}") from err
    return state_dicts, stored, blank_embedding


def convert_checkpoint(source: str | Path, target: str | Path, config_dir: str | Path | None = None,
                       dtype: torch.dtype | None = None) -> Path:
    """Write ``source`` (``.bin`` or ``.safetensors``) as a self-describing ``.safetensors``.

    The parts are first checked against their configs as loading checks them, so that another
    model's file is refused here rather than written out as gigabytes that fail only when loaded.
    The target is written next to its final name and renamed into place only when complete, so
    an interrupted conversion never leaves a half-written file under the real name. Refuses to
    overwrite the source. ``dtype`` (e.g. ``torch.float16``) casts floating-point tensors. A float32
    file also gets the embedding of the blank image-encoder input, computed here from its weights
    (one image-encoder pass), which spares the first edit after each load that pass.
    """
    source, target = Path(source), Path(target)
    if target.is_dir():
        raise ModelFileError(f"'{target}' is a folder: give the converted file's name (ending in .safetensors).")
    blocking = next((folder for folder in target.parents if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        raise ModelFileError(f"'{blocking}' is a file, not a folder, so '{target}' cannot be written there: choose "
                             "another place for the converted file.")
    if target.suffix != ".safetensors":
        raise ModelFileError(f"The converted file must end in .safetensors, not '{target.name}'.")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise ModelFileError("The converted file must not replace its source; choose another name.")
    checkpoint = read_checkpoint(source, config_dir)
    networks = _refuse_what_would_not_load(checkpoint)
    flat = {}
    for part in PARTS:
        for key, tensor in checkpoint.state_dicts[part].items():
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            flat[f"{part}.{key}"] = tensor.contiguous()
    encoder, projection = networks["image_encoder"], networks["image_proj"]
    if dtype in (None, torch.float32) and all(t.dtype == torch.float32 for t in (*encoder.parameters(),
                                                                              *projection.parameters())):
        with torch.inference_mode():
            flat[STORED_KEY] = compute_blank_embedding(encoder, projection).contiguous()
    metadata = {"format": "pt", "mimicbrush_format": FORMAT_NAME, "mimicbrush_format_version": FORMAT_VERSION}
    metadata.update({f"{part}_config": json.dumps(checkpoint.configs[part], sort_keys=True) for part in PARTS})
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        save_file(flat, str(partial), metadata=metadata)
        try:
            partial.chmod(new_file_mode())
        except OSError as err:  # a file system without Unix permissions (exFAT, some network mounts)
            logger.warning("Could not give '%s' the usual permissions (%s); it keeps its own.", target, err)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _refuse_what_would_not_load(checkpoint: MimicBrushCheckpoint) -> dict[str, torch.nn.Module]:
    """Build the five networks from ``checkpoint`` as the loader does, raising its own refusal (the part,
    its missing, unexpected and misshapen keys, what the weights probably are, the fix), and return them.
    The networks are made on the meta device and take the file's tensors by assignment, so the file's
    weights are neither copied nor read here; only the few the authors' reference U-Net lacks are made,
    as zeros."""
    from .components import build_components  # deferred: components builds on this module's checkpoint type

    return build_components(checkpoint)
