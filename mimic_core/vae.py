"""Loading the SD VAE (``AutoencoderKL``) from a diffusers folder or a single weights file.

MimicBrush uses the plain SD 1.x VAE (``stabilityai/sd-vae-ft-mse`` in the authors' release,
folder ``sd-vae-ft-mse/``). ComfyUI users usually keep such a VAE as one file in
``models/vae``, in the original LDM/CompVis key layout (``encoder.down.0.block.0...``), sometimes
inside a full SD checkpoint (prefix ``first_stage_model.``). All of these load here into a stock
diffusers ``AutoencoderKL``.

Every path goes through the same strict route: the model is built on the meta device (no memory,
no random init), the weights are read without executing pickled code, renamed to the diffusers
layout by diffusers' own converters when needed, checked key by key and shape by shape, and then
*assigned* into the model (``load_state_dict(assign=True)``), so each tensor exists once.
``AutoencoderKL.from_pretrained`` is not used for folders on purpose: without ``accelerate``
installed (it is not a dependency) it initialises the model randomly and then copies the weights
in (twice the memory), and it only warns about missing or unexpected keys, leaving missing ones
random. The result is the same model; the tests compare both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors import SafetensorError

from .errors import ModelFileError
from .files import load_state_dict_file, open_safetensors, read_json

logger = logging.getLogger(__name__)

SD_VAE_CONFIG = Path(__file__).resolve().parent / "configs" / "sd_vae.json"
"""The built-in architecture: the SD 1.x VAE as in ``stabilityai/sd-vae-ft-mse`` (scaling 0.18215)."""

WHERE_TO_GET = (
    "Get the SD VAE from Hugging Face: stabilityai/sd-vae-ft-mse (the VAE the MimicBrush authors use; "
    "their release puts it in sd-vae-ft-mse/), or use any SD 1.x VAE file from ComfyUI's models/vae."
)
EXPECTED = (
    "an SD 1.x VAE: a diffusers folder (config.json + diffusion_pytorch_model.safetensors or .bin) "
    "or a single .safetensors / .pt / .ckpt / .bin file"
)

# Weight files of a diffusers folder, in order of preference.
FOLDER_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")

# Key prefixes under which a VAE is stored inside bigger files: full SD checkpoints use
# ``first_stage_model.``; some exports use ``vae.``.
_PREFIXES = ("", "first_stage_model.", "vae.")
_DIFFUSERS_MARKERS = ("encoder.down_blocks.", "decoder.up_blocks.", "encoder.mid_block.", "decoder.mid_block.")
_LDM_MARKERS = ("encoder.down.", "decoder.up.", "encoder.mid.", "decoder.mid.")
# Training leftovers some LDM VAE checkpoints carry (the GAN/LPIPS loss, EMA bookkeeping). They are
# not part of the autoencoder, so they are skipped rather than reported as unexpected.
_LDM_TRAINING_PREFIXES = ("loss.", "model_ema.")

_SHOW = 5  # how many offending keys an error message names


def load_vae(path: str | Path, *, config: Mapping | str | Path | None = None,
             dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> AutoencoderKL:
    """Load an SD VAE as a diffusers ``AutoencoderKL`` in eval mode with gradients off.

    ``path`` is either a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``
    or ``.bin``; a whole pipeline folder with a ``vae/`` subfolder also works) or a single file
    (``.safetensors``, or ``.pt``/``.pth``/``.ckpt``/``.bin`` read with ``weights_only=True``) in
    the LDM/CompVis key layout (optionally under ``first_stage_model.``, as in full SD checkpoints)
    or in the diffusers key layout.

    ``config`` gives the architecture: a dict, a path to a ``config.json``, or a folder holding
    one. It is used for single files and for folders without their own ``config.json``; a
    folder's own ``config.json`` takes precedence. Without either, the built-in SD 1.x config
    (``configs/sd_vae.json``) is used.

    Weights load strictly: any missing, unexpected or mis-shaped tensor raises
    :class:`ModelFileError`, as does any other problem with the files (missing, truncated, a
    pickle that would run code, another model). Nothing is downloaded.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"SD VAE not found at '{path}'. Expected {EXPECTED}. {WHERE_TO_GET}")
    if path.is_dir():
        weights_file, config_dict, config_source = _resolve_folder(path, config)
    else:
        if path.suffix.lower() not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
            raise ModelFileError(
                f"'{path}' is not a file type the SD VAE comes in. Expected {EXPECTED}. {WHERE_TO_GET}")
        weights_file = path
        config_dict, config_source = _resolve_config(config)

    model = _build_empty(config_dict, config_source)
    layout, prefix, state = _read_vae_tensors(weights_file)
    dropped: list[str] = []
    if layout == "ldm":
        state, dropped = _convert_ldm(state, model, weights_file)
    else:
        _rename_legacy_attention(model, state)
    _check_state_dict(state, model, weights_file, config_source, dropped)

    state = {key: _place(tensor, dtype, device) for key, tensor in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # already checked above; kept so nothing escapes unexplained
        raise ModelFileError(
            f"'{weights_file}' could not be loaded as {config_source}: {err}. {WHERE_TO_GET}") from err
    left_empty = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_empty:  # a buffer no file holds (none in today's AutoencoderKL); never hand out meta tensors
        raise ModelFileError(f"'{weights_file}' left parts of the VAE without values: {', '.join(left_empty[:_SHOW])}.")
    model.to(device=device)
    model.eval()
    model.requires_grad_(False)
    logger.info("Loaded the VAE from '%s' (%s key layout%s, %d tensors, %s).", weights_file, layout,
                f", prefix '{prefix}'" if prefix else "", len(state), config_source)
    return model


def _resolve_folder(folder: Path, config) -> tuple[Path, dict, str]:
    """The weights file and the architecture of a diffusers folder."""
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        logger.debug("'%s' looks like a diffusers pipeline; using its vae/ subfolder.", folder)
        folder = folder / "vae"
    weights = next((folder / name for name in FOLDER_WEIGHT_NAMES if (folder / name).is_file()), None)
    config_file = folder / "config.json"
    if weights is None:
        raise ModelFileError(
            f"The VAE folder '{folder}' holds no diffusion_pytorch_model.safetensors (or .bin). "
            f"Expected {EXPECTED}. {WHERE_TO_GET}")
    if config_file.is_file():
        if config is not None:
            logger.debug("Using '%s' rather than the config passed in: the folder describes itself.", config_file)
        return weights, _checked_config(read_json(config_file), config_file), f"the config '{config_file}'"
    if config is not None:
        config_dict, source = _resolve_config(config)
        return weights, config_dict, source
    raise ModelFileError(
        f"The VAE folder '{folder}' has no config.json, so its architecture is unknown. Expected {EXPECTED}. "
        "Copy config.json from the same download next to the weights. " + WHERE_TO_GET)


def _resolve_config(config) -> tuple[dict, str]:
    """The config dict and a phrase naming where it came from (for error messages)."""
    if config is None:
        return _checked_config(read_json(SD_VAE_CONFIG), SD_VAE_CONFIG), "the built-in SD 1.x VAE config"
    if isinstance(config, Mapping):
        return _checked_config(dict(config), "the given config"), "the given config"
    config_path = Path(config)
    if config_path.is_dir():
        config_path = config_path / "config.json"
    if not config_path.is_file():
        raise ModelFileError(f"VAE config not found at '{config_path}'. Expected a diffusers AutoencoderKL "
                             f"config.json. {WHERE_TO_GET}")
    return _checked_config(read_json(config_path), config_path), f"the config '{config_path}'"


def _checked_config(config: dict, source) -> dict:
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
        raise ModelFileError(
            f"'{source}' is a config for {class_name}, not for the VAE (AutoencoderKL). {WHERE_TO_GET}")
    return config


def _build_empty(config: dict, config_source: str) -> AutoencoderKL:
    """The architecture on the meta device: no memory, no random init (weights are assigned later)."""
    try:
        with torch.device("meta"):
            return AutoencoderKL.from_config(config)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as err:
        raise ModelFileError(f"{config_source} does not describe a buildable AutoencoderKL ({err}).") from err


def _detect_layout(keys: Iterable[str]) -> tuple[str | None, str]:
    """(``"diffusers"`` | ``"ldm"`` | None, key prefix) judged from the tensor names alone."""
    keys = list(keys)
    for prefix in _PREFIXES:
        scoped = [key[len(prefix):] for key in keys if key.startswith(prefix)]
        if any(key.startswith(_DIFFUSERS_MARKERS) for key in scoped):
            return "diffusers", prefix
        if any(key.startswith(_LDM_MARKERS) for key in scoped):
            return "ldm", prefix
    return None, ""


def _read_vae_tensors(path: Path) -> tuple[str, str, dict[str, torch.Tensor]]:
    """The VAE's tensors of ``path``, prefix removed, with their key layout.

    For ``.safetensors`` only the VAE's tensors are read, so a full SD checkpoint costs the
    VAE's memory, not the checkpoint's; torch pickles are memory-mapped by ``files``.
    """
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            handle = open_safetensors(path)
            names = list(handle.keys())
            layout, prefix = _detect_layout(names)
            wanted = [name for name in names if name.startswith(prefix)] if layout else []
            try:
                tensors = {name: handle.get_tensor(name) for name in wanted}
            except (SafetensorError, OSError, ValueError, RuntimeError) as err:
                raise ModelFileError(
                    f"'{path}' is damaged: a tensor could not be read ({err}). Download it again.") from err
        else:
            tensors = load_state_dict_file(path)
            names = list(tensors)
            layout, prefix = _detect_layout(names)
    except ModelFileError as err:
        raise ModelFileError(f"{err} Expected {EXPECTED}. {WHERE_TO_GET}") from err

    if layout is None:
        shown = ", ".join(names[:_SHOW]) or "none"
        raise ModelFileError(
            f"'{path}' is not an SD 1.x VAE: none of its {len(names)} tensors has a VAE encoder/decoder name "
            f"(first keys: {shown}). Expected {EXPECTED}. {WHERE_TO_GET}")
    state = {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
    if len(state) != len(tensors):
        logger.debug("'%s': ignoring %d tensors outside '%s' (other parts of a full checkpoint).",
                     path, len(tensors) - len(state), prefix)
    return layout, prefix, state


def _convert_ldm(state: dict[str, torch.Tensor], model: AutoencoderKL,
                 path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """LDM/CompVis names -> diffusers names, with diffusers' own single-file converter.

    Returns the converted state dict and the LDM keys the converter dropped: it silently ignores
    every key it does not recognise, so those are reported as unexpected instead of being lost.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    leftovers = [key for key in state if key.startswith(_LDM_TRAINING_PREFIXES)]
    if leftovers:
        logger.debug("'%s': skipping %d training tensors (%s...).", path, len(leftovers), leftovers[0])
        state = {key: value for key, value in state.items() if not key.startswith(_LDM_TRAINING_PREFIXES)}
    config = dict(model.config)  # complete config: defaults filled in
    try:
        converted = convert_ldm_vae_checkpoint(state, config)
    except KeyError as err:  # e.g. an upsampler weight without its bias
        raise ModelFileError(
            f"'{path}' is not a complete SD 1.x VAE in the LDM layout: tensor {err} is missing. {WHERE_TO_GET}") from err
    except (IndexError, ValueError, RuntimeError, AttributeError) as err:
        raise ModelFileError(
            f"'{path}' is not an SD 1.x VAE in the LDM layout (diffusers' converter failed: {err!r}). "
            f"{WHERE_TO_GET}") from err
    dropped = []
    if len(converted) < len(state):  # one LDM key becomes one diffusers key
        dropped = _dropped_by_converter(state, config, convert_ldm_vae_checkpoint)
    return converted, dropped


def _dropped_by_converter(state: Mapping[str, torch.Tensor], config: dict, convert) -> list[str]:
    """The LDM keys the converter ignored, found by running it on traceable meta placeholders.

    Each output is either an input tensor itself or a view of one (attention weights are squeezed
    from 1x1 conv to linear), so an input that appears in no output was dropped.
    """
    placeholders = {key: torch.empty(tuple(value.shape), device="meta") for key, value in state.items()}
    try:
        outputs = convert(placeholders, config).values()
    except (KeyError, IndexError, ValueError, RuntimeError, AttributeError):
        return ["(the converter could not tell which)"]
    used = {id(t) for t in outputs} | {id(t._base) for t in outputs if t._base is not None}
    return [key for key, value in placeholders.items() if id(value) not in used]


def _rename_legacy_attention(model: AutoencoderKL, state: dict[str, torch.Tensor]) -> None:
    """Rename the attention names of diffusers < 0.14 (``query``/``key``/``value``/``proj_attn``).

    Many copies of ``sd-vae-ft-mse`` still use them; ``from_pretrained`` renames them with this
    same model method (in place), so a folder and a single file of it load alike.
    """
    fix = getattr(model, "_fix_state_dict_keys_on_load", None) or getattr(
        model, "_convert_deprecated_attention_blocks", None)
    if fix is not None:
        fix(state)


def _check_state_dict(state: Mapping[str, torch.Tensor], model: AutoencoderKL, path: Path,
                      config_source: str, dropped: list[str] = ()) -> None:
    """Raise naming the first few missing, unexpected (``dropped`` included) and mis-shaped keys."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = list(dropped) + [key for key in state if key not in expected]
    mismatched = [f"{key}: file {list(state[key].shape)}, model {list(expected[key])}"
                  for key in state if key in expected and tuple(state[key].shape) != expected[key]]
    if missing or unexpected or mismatched:
        _raise_mismatch(path, config_source, missing=missing, unexpected=unexpected, mismatched=mismatched)


def _raise_mismatch(path: Path, config_source: str, *, missing=(), unexpected=(), mismatched=()) -> None:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", mismatched)):
        if keys:
            shown = "; ".join(keys[:_SHOW]) + ("; ..." if len(keys) > _SHOW else "")
            parts.append(f"tensors {label}: {len(keys)} ({shown})")
    raise ModelFileError(
        f"'{path}' is not an SD 1.x VAE (or does not match {config_source}): " + ", ".join(parts)
        + f". {WHERE_TO_GET}")


def _place(tensor: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    """Move to the target dtype/device; a no-op (no copy) when the tensor already is there."""
    if tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype).contiguous()
    return tensor.to(device=device).contiguous()
