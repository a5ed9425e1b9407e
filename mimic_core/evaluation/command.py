"""The ``python -m mimic_core evaluate`` command: the paper's evaluation protocol on a benchmark folder.

Only the argument parser lives here. ``cli.py`` imports this module for every command, so
torchmetrics, accelerate and the harness are imported when ``evaluate`` runs, not before.
"""

from __future__ import annotations

import argparse

from ..errors import InputError


def add_command(commands) -> None:
    """Register the subcommand on the CLI's subparsers."""
    evaluate = commands.add_parser(
        "evaluate", help="score an editor on a benchmark folder with the paper's metrics",
        description="Run MimicBrush over a benchmark folder (or take a folder of results made by anything else) "
                    "and score it as the paper does: SSIM, PSNR, LPIPS on inner-ID cases; DINO-I, CLIP-I, "
                    "CLIP-T on inter-ID cases. Writes OUT/report.json, OUT/report.md and OUT/sheets/<case>.png. "
                    "See docs/evaluation.md.")
    evaluate.add_argument("--benchmark", required=True, help="folder holding manifest.json and the case images")
    evaluate.add_argument("--out", required=True,
                          help="new or earlier evaluation folder: results/, sheets/, report.json, report.md")
    evaluate.add_argument("--results", help="score these result images (<case id>.png or .jpg, at the source's "
                                            "size) instead of running the editor")
    from ..command_options import add_model_options

    add_model_options(evaluate.add_argument_group(
        "editor (not needed to score existing results; under accelerate or torchrun --device auto is each "
        "process's own device, and the metric backbones run there too)"))
    run = evaluate.add_argument_group("running")
    run.add_argument("--shard", help="I/N: edit only every N-th case from the I-th (0-based), for separate "
                                     "processes or machines; a later run without --shard writes the report")
    run.add_argument("--overwrite", action="store_true", help="redo the cases that already have a result")
    metrics = evaluate.add_argument_group("metric backbones (local paths; a metric without one is reported as not "
                                          "computed)")
    metrics.add_argument("--dino", help="DINOv2 transformers folder (e.g. facebook/dinov2-base) for DINO-I")
    metrics.add_argument("--clip", help="CLIP transformers folder with its processor (e.g. "
                                        "openai/clip-vit-large-patch14) for CLIP-I and CLIP-T")
    metrics.add_argument("--lpips-backbone", help="torchvision ImageNet weights of the LPIPS backbone "
                                                  "(e.g. alexnet-owt-7be5be79.pth); needs torchvision")
    metrics.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"],
                         help="LPIPS backbone (default %(default)s)")
    metrics.add_argument("--batch-size", type=int, default=8, help="cases scored per backbone batch (default %(default)s)")
    metrics.add_argument("--sheet-height", type=int, default=256, help="panel height of the contact sheets in pixels")
    evaluate.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        from .harness import evaluate
    except ModuleNotFoundError as err:
        raise InputError(f"The evaluate command needs {err.name}: pip install -r requirements-train.txt") from err
    return evaluate(args)
