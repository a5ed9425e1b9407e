"""``mimicbrush edit|convert|train|evaluate`` (also ``python -m mimic_core ...``).

``train`` and ``evaluate`` live in their own packages; their modules import their heavier
dependencies only when the command runs, so ``edit`` works with just the runtime requirements.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .checkpoint import convert_checkpoint
from .errors import InputError, MimicBrushError
from .evaluation.command import add_command as add_evaluate_command
from .model_files import find_model_files
from .models import load_models
from .pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, REGIONS, SAMPLERS, MimicBrushPipeline
from .preprocess import mask_to_binary
from .training.command import add_command as add_train_command

logger = logging.getLogger("mimic_core")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CONFIG_DIR_ENV = "MIMICBRUSH_CONFIG_DIR"


def read_image(path: str, mode: str) -> torch.Tensor:
    """An image file as ``[1, H, W, C]`` float in 0..1 (``mode`` "RGB" or "L")."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(f"Cannot read the image '{path}': {err}") from err
    tensor = torch.from_numpy(array.copy())
    return tensor[None, ..., None] if mode == "L" else tensor[None]


def write_image(image: torch.Tensor, path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError(f"'{path}' exists; choose another --out or pass --overwrite.")
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(array).save(path)


def _edit(args: argparse.Namespace) -> int:
    out = Path(args.out)
    outputs = [out] if args.samples == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(args.samples)]
    inputs = {Path(p).resolve() for p in (args.source, args.mask, args.reference)}
    if any(path.resolve() in inputs for path in outputs):
        raise InputError("--out would overwrite one of the input images; choose another name.")
    source, reference = read_image(args.source, "RGB"), read_image(args.reference, "RGB")
    mask = read_image(args.mask, "L")[..., 0]
    mask_to_binary(mask, source.shape[1], source.shape[2])  # refuse a bad mask before loading gigabytes
    if not (args.models or args.checkpoint or args.vae or args.depth_model):
        from .demo import DEMO_GUIDANCE, DEMO_NOTICE, DEMO_STEPS, DEMO_WORKING_SIZE, demo_model_files

        logger.warning(DEMO_NOTICE)
        files = demo_model_files()
        defaults = DEMO_STEPS, DEMO_GUIDANCE, DEMO_WORKING_SIZE
    else:
        files = find_model_files(args.models, checkpoint=args.checkpoint, vae=args.vae, depth_model=args.depth_model)
        defaults = DEFAULT_STEPS, DEFAULT_GUIDANCE, None
    steps, guidance, working_size = (default if given is None else given
                                     for given, default in zip((args.steps, args.guidance, args.working_size), defaults))
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    logger.info("Loading models (%s, %s on %s)", files.checkpoint, dtype, device)
    models = load_models(files.checkpoint, files.vae, files.depth_model, config_dir=args.config_dir,
                         dtype=dtype, device=device)
    pipeline = MimicBrushPipeline(models, release_encoders=True)
    result = pipeline.edit(
        source, mask, reference, keep_shape=args.keep_shape, steps=steps, guidance=guidance, seed=args.seed,
        num_samples=args.samples, region=args.region, working_size=working_size,
        sampler=args.sampler, reference_every=args.reference_every, guided_fraction=args.guided_fraction,
        deep_features_every=args.deep_features_every,
        callback=lambda step, total, _: logger.info("step %d/%d", step, total),
    )
    for image, path in zip(result.images, outputs):
        write_image(image, path, args.overwrite)
        print(path)
    return 0


def _convert(args: argparse.Namespace) -> int:
    if Path(args.output).exists() and not args.overwrite:
        raise InputError(f"'{args.output}' exists; choose another name or pass --overwrite.")
    print(convert_checkpoint(args.input, args.output, args.config_dir,
                             dtype=torch.float16 if args.half else None))
    return 0


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
                         help=f"guidance scale (default {DEFAULT_GUIDANCE:g}; the demo model's 3)")
    options.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    options.add_argument("--region", default="whole", choices=REGIONS,
                         help="whole: the authors' padded whole image; crop: a square around the mask at full detail, "
                              "stitched back; crop_each: one crop per masked region (default %(default)s)")
    options.add_argument("--working-size", type=int,
                         help="square side the model works on, a multiple of 64 (default 512; the demo model's 128)")
    options.add_argument("--sampler", default="ddim", choices=list(SAMPLERS),
                         help="ddim is the authors' (exact); the others are fast mode for 20-25 steps")
    options.add_argument("--reference-every", type=int, default=1,
                         help="recompute reference features every k steps; 1 exact, 0 once (fast mode)")
    options.add_argument("--guided-fraction", type=float, default=1.0,
                         help="share of the steps, from the first, with classifier-free guidance; 1 exact, less is "
                              "fast mode (the later steps run the conditional branch alone, at half the cost)")
    options.add_argument("--deep-features-every", type=int, default=1,
                         help="run the whole imitative U-Net every k steps and only its outermost level between, "
                              "on the deep features kept (DeepCache); 1 exact, 2-5 fast mode")
    options.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    options.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="default: fp16 on GPU, fp32 on CPU")


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, torch.dtype]:
    """``--device`` and ``--dtype`` as given, or their defaults (cuda when available; fp16 on a GPU, fp32 on the CPU)."""
    device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return device, DTYPES[dtype] if dtype != "auto" else (torch.float16 if device != "cpu" else torch.float32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimicbrush",
                                     description="MimicBrush: edit an image by imitating a reference.")
    commands = parser.add_subparsers(dest="command", required=True)

    edit = commands.add_parser("edit", help="regenerate the masked region of a source image from a reference")
    edit.add_argument("--source", required=True, help="the image to edit")
    edit.add_argument("--mask", required=True, help="grey mask of the source; white = region to regenerate")
    edit.add_argument("--reference", required=True, help="the image whose matching part is imitated")
    edit.add_argument("--out", required=True, help="where to write the edited image (PNG)")
    add_model_options(edit)
    edit.add_argument("--keep-shape", action="store_true", help="shape control: keep the source's shape (depth-guided)")
    edit.add_argument("--samples", type=int, default=1, help="number of results; written as OUT_0.png, OUT_1.png, ...")
    edit.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    edit.set_defaults(run=_edit)

    convert = commands.add_parser("convert", help="convert mimicbrush.bin to a self-describing .safetensors")
    convert.add_argument("input", help="mimicbrush.bin (or a .safetensors to re-describe)")
    convert.add_argument("output", help="the .safetensors to write")
    convert.add_argument("--config-dir", default=os.environ.get(CONFIG_DIR_ENV),
                         help="folder of <part>_config.json to store (default: the released architectures)")
    convert.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    convert.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    convert.set_defaults(run=_convert)

    add_train_command(commands)
    add_evaluate_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except MimicBrushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
