"""Options and helpers that several commands share (``edit`` and ``evaluate``), below both of them.

The commands import from here; nothing here imports a command. Every option is checked here,
before any model loads, by the same rules the engine applies (:mod:`mimic_core.edit_options`),
so a typo costs a second, not a model load.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from .edit_options import (DEFAULT_GUIDANCE, DEFAULT_STEPS, MAX_REFERENCE_STRENGTH, QUALITY_PRESETS, REGIONS,
                           SAMPLERS, OptionError, describe_quality, RegionOptions, SamplingOptions)
from .errors import InputError

logger = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CONFIG_DIR_ENV = "MIMICBRUSH_CONFIG_DIR"


def add_model_options(options) -> None:
    """The model-file, sampling and device options of ``edit``, shared by the commands that edit
    (``options``: a parser or an argument group)."""
    options.add_argument("--models", help="folder in the authors' layout: mimicbrush/, sd-vae-ft-mse/, depth_model/ "
                                           "(edit without any model option uses the built-in demo model)")
    options.add_argument("--checkpoint", help="MimicBrush checkpoint (.bin or converted .safetensors), instead of --models")
    options.add_argument("--vae", help="SD VAE (diffusers folder or single file), instead of --models")
    options.add_argument("--depth-model", help="Depth Anything (.pth or transformers folder), instead of --models")
    options.add_argument("--config-dir", default=os.environ.get(CONFIG_DIR_ENV),
                         help=f"folder of <part>_config.json for non-released architectures (env {CONFIG_DIR_ENV})")
    options.add_argument("--steps", type=int, help=f"DDIM steps (default {DEFAULT_STEPS}; the demo model's 25)")
    options.add_argument("--guidance", type=float,
                         help=f"guidance scale, 0 or more (default {DEFAULT_GUIDANCE:g}; the demo model's 3); up to 1 "
                              "turns classifier-free guidance off, at half the cost")
    options.add_argument("--seed", type=int, default=0, help="random seed, 0 to 2**64-1 (default %(default)s)")
    options.add_argument("--region", default="whole", choices=REGIONS,
                         help="whole: the authors' padded whole image; crop: a square around the mask at full detail, "
                              "stitched back; crop_each: one crop per masked region (default %(default)s)")
    options.add_argument("--working-size", type=int,
                         help="square side the model works on, a multiple of 64 (default 512; the demo model's 128)")
    options.add_argument("--quality", choices=list(QUALITY_PRESETS),
                         help="a named setting of --steps, --sampler, --reference-every, --guided-fraction and "
                              "--deep-features-every (each one given still wins): "
                              + "; ".join(f"{name}: {describe_quality(name)}" for name in QUALITY_PRESETS))
    options.add_argument("--sampler", choices=list(SAMPLERS),
                         help="ddim is the authors' (exact, the default); the others are fast mode for 10-25 steps")
    options.add_argument("--reference-every", type=int,
                         help="recompute reference features every k steps; 1 exact (default), 0 once (fast mode)")
    options.add_argument("--guided-fraction", type=float,
                         help="share of the steps, from the first, with classifier-free guidance; 1 exact (default), "
                              "less is fast mode (the later steps run the conditional branch alone, at half the cost)")
    options.add_argument("--deep-features-every", type=int,
                         help="run the whole imitative U-Net every k steps and only its outermost level between, "
                              "on the deep features kept (DeepCache); 1 exact (default), 2-5 fast mode")
    options.add_argument("--reference-strength", type=float, default=1.0,
                         help=f"how much the reference's attention weighs, 0 to {MAX_REFERENCE_STRENGTH:g}: 1 is the "
                              "model's own (exact); 0 imitates through the CLIP embedding alone")
    options.add_argument("--denoise", type=float, default=1.0,
                         help="as ComfyUI's denoise: 1 samples from noise (exact); less starts from the source noised "
                              "part way and keeps more of its layout inside the mask")
    options.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    options.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                         help="default: fp16 on GPU, fp32 (exact) on CPU; bf16 runs a step about 1.6x faster than fp32 "
                              "on a CPU with AVX512-BF16 or AMX (not exact), and is emulated (slower) elsewhere")


OPTION_NAMES = {"num_samples": "--samples"}
"""How the commands spell a setting whose option is not ``--`` and its name with dashes."""


def option_name(setting: str) -> str:
    return OPTION_NAMES.get(setting, "--" + setting.replace("_", "-"))


def sampling_options(args: argparse.Namespace, steps: int, guidance: float, working_size: int,
                     num_samples: int = 1) -> SamplingOptions:
    """The sampling options given, checked as the engine checks them; a refusal names the command's
    option. One not given is taken from ``--quality``'s preset when there is one, else from the
    defaults passed (``steps``, ``guidance``, ``working_size``) or the engine's."""
    given = {name: getattr(args, name) for name in ("steps", "sampler", "reference_every", "guided_fraction",
                                                     "deep_features_every") if getattr(args, name) is not None}
    try:
        fields = dict(guidance=guidance if args.guidance is None else args.guidance, seed=args.seed,
                      num_samples=num_samples, working_size=working_size if args.working_size is None else args.working_size,
                      reference_strength=args.reference_strength, denoise=args.denoise)
        if args.quality is not None:
            return SamplingOptions.with_quality(args.quality, **fields, **given)
        return SamplingOptions(**{"steps": steps, **fields, **given})
    except OptionError as err:
        raise err.spelled({err.option: option_name(err.option)}) from None


def region_options(args: argparse.Namespace) -> RegionOptions:
    """``--region``, checked as the engine checks it (crops take the engine's context and least side)."""
    try:
        return RegionOptions(args.region)
    except OptionError as err:
        raise err.spelled({err.option: option_name(err.option)}) from None


def check_device(name: str) -> torch.device:
    """A device this machine has, or :class:`InputError` saying what it has instead."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device '{name}' is not a device; give auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None else "no NVIDIA GPU is visible")
            raise InputError(f"--device {name}: {why}; use --device cpu, or install a CUDA build of torch "
                             "(https://pytorch.org/get-started/locally/).")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; "
                             "pick one of those.")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {name}: Apple's Metal (MPS) is not available here; use --device cpu.")
        return device
    raise InputError(f"--device {name}: {device.type} devices are not supported; give auto, cpu, cuda, cuda:N or mps.")


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, torch.dtype]:
    """``--device`` and ``--dtype`` as given (the device checked to exist), or their defaults (cuda when
    available; fp16 on a GPU, fp32 on the CPU). A half precision the CPU only emulates is warned about."""
    from .cpu_precision import slow_precision_warning

    device = str(check_device(device)) if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    chosen = DTYPES[dtype] if dtype != "auto" else (torch.float16 if device != "cpu" else torch.float32)
    if (warning := slow_precision_warning(chosen, device)) is not None:
        logger.warning(warning)
    return device, chosen
