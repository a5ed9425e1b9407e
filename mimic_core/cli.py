"""``mimicbrush edit|convert|train|evaluate`` (also ``python -m mimic_core ...``).

``train`` and ``evaluate`` live in their own packages; their modules import their heavier
dependencies only when the command runs, so ``edit`` works with just the runtime requirements.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
from pathlib import Path

import torch

from .checkpoint import convert_checkpoint
from .command_options import (CONFIG_DIR_ENV, add_model_options, region_options, resolve_device_dtype,
                              sampling_options)
from .crop import squares_edited
from .edit_options import DEFAULT_GUIDANCE, DEFAULT_STEPS
from .errors import InputError, MimicBrushError
from .evaluation.command import add_command as add_evaluate_command
from .image_files import read_image, read_mask, read_transparency_mask
from .model_files import find_model_files
from .models import load_models
from .output_images import check_output_path, write_images
from .pipeline import MimicBrushPipeline
from .preprocess import WORKING_SIZE, image_to_uint8, mask_to_binary
from .training.command import add_command as add_train_command

logger = logging.getLogger("mimic_core")


def _output_paths(args: argparse.Namespace) -> list[Path]:
    out = Path(args.out)
    return [out] if args.samples == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(args.samples)]


def _edit(args: argparse.Namespace) -> int:
    """Everything the user gave is checked (options, device, output paths, images, mask) before the
    models load; the edit, once made, is written or kept safe (:mod:`mimic_core.output_images`)."""
    demo = not (args.models or args.checkpoint or args.vae or args.depth_model)
    if demo:
        from .demo import DEMO_GUIDANCE, DEMO_NOTICE, DEMO_STEPS, DEMO_WORKING_SIZE, demo_model_files

        defaults = DEMO_STEPS, DEMO_GUIDANCE, DEMO_WORKING_SIZE
    else:
        defaults = DEFAULT_STEPS, DEFAULT_GUIDANCE, WORKING_SIZE
    sampling = sampling_options(args, *defaults, num_samples=args.samples)
    regions = region_options(args)
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    outputs = _output_paths(args)
    reference_masks = args.reference_mask or []
    if reference_masks and len(reference_masks) != len(args.reference):
        raise InputError(f"{len(reference_masks)} --reference-mask for {len(args.reference)} --reference: give one "
                         "reference mask per reference, in the same order, or none.")
    painted_in = args.mask is None or Path(args.mask).resolve() == Path(args.source).resolve()
    inputs = [Path(p) for p in (args.source, *([] if painted_in else [args.mask]), *args.reference, *reference_masks)]
    image_format = [check_output_path(path, inputs, args.overwrite) for path in outputs][0]
    source = read_image(args.source, "RGB")
    references = [read_image(path, "RGB") for path in args.reference]
    # every mask at its image's size, checked (and resized, with its one warning) before loading gigabytes
    drawn = read_transparency_mask(args.source) if painted_in else read_mask(args.mask)
    try:
        mask = torch.from_numpy(mask_to_binary(drawn, *source.shape[1:3])).float()
    except InputError as err:
        if not painted_in:
            raise
        given = "No --mask was given" if args.mask is None else "--mask names the source"
        raise InputError(f"{given}, so the mask is the source's transparent part. {err}") from None
    masks = [torch.from_numpy(mask_to_binary(read_mask(path), *reference.shape[1:3], of="reference")).float()
             for path, reference in zip(reference_masks, references)] or None
    if demo:
        logger.warning(DEMO_NOTICE)
        files = demo_model_files()
    else:
        files = find_model_files(args.models, checkpoint=args.checkpoint, vae=args.vae, depth_model=args.depth_model)
    logger.info("Loading models (%s, %s on %s)", files.checkpoint, dtype, device)
    models = load_models(files.checkpoint, files.vae, files.depth_model, config_dir=args.config_dir,
                         dtype=dtype, device=device)
    pipeline = MimicBrushPipeline(models, working_size=sampling.working_size, release_encoders=True)
    reference = pipeline.encode_reference(references, masks)
    squares = squares_edited(mask.numpy(), regions.region)  # one count of steps over every square
    done = itertools.count(1)
    result = pipeline.edit(
        source, mask, reference, keep_shape=args.keep_shape, sampling=sampling, regions=regions,
        callback=lambda step, total, _: logger.info("step %d/%d", next(done), squares * total),
    )
    write_images([image_to_uint8(image) for image in result.images], outputs, image_format)
    for path in outputs:
        print(path)
    return 0


def _convert(args: argparse.Namespace) -> int:
    if Path(args.output).is_file() and not args.overwrite:
        raise InputError(f"'{args.output}' exists; choose another name or pass --overwrite.")
    print(convert_checkpoint(args.input, args.output, args.config_dir,
                             dtype=torch.float16 if args.half else None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimicbrush",
                                     description="MimicBrush: edit an image by imitating a reference.")
    commands = parser.add_subparsers(dest="command", required=True)

    edit = commands.add_parser("edit", help="regenerate the masked region of a source image from a reference")
    edit.add_argument("--source", required=True, help="the image to edit")
    edit.add_argument("--mask", help="grey mask of the source; white = region to regenerate. Left out (or naming the "
                                     "source itself): the source's transparent part, as ComfyUI's mask editor saves it")
    edit.add_argument("--reference", required=True, action="append",
                      help="the image whose matching part is imitated; give it more than once for several images "
                           "of one reference (two views of an object): the edit imitates them together")
    edit.add_argument("--reference-mask", action="append",
                      help="grey mask of the reference (white = imitate this part), one per --reference in order; "
                           "leave it out to imitate the whole reference")
    edit.add_argument("--out", required=True, help="where to write the edited image (.png, .jpg, .webp, .tif or .bmp)")
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
