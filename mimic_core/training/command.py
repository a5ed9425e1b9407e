"""The ``python -m mimic_core train`` command.

Only argparse is used at import: ``cli.py`` imports this module for every command, and ``edit``
must work with the runtime requirements alone. The trainer and its dependencies (accelerate,
peft, kornia, PyYAML) are imported when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from ..errors import InputError

TRAINING_REQUIREMENTS = "pip install -r requirements-train.txt"


def add_command(commands) -> None:
    """Register the subcommand on the CLI's subparsers."""
    train = commands.add_parser(
        "train", help="train or fine-tune MimicBrush (needs requirements-train.txt; docs/training.md)",
        description="Train MimicBrush as the paper does (video and image pairs, grid masks, conditioning dropout) "
                    "on one or many GPUs (launch with 'accelerate launch -m mimic_core train ...'). The result is "
                    "written to OUTPUT/final/ as mimicbrush.bin (authors' format) and mimicbrush.safetensors.")
    train.add_argument("--config", help="YAML or JSON file with the settings that differ from the defaults")
    train.add_argument("--output-dir", help="folder of the run (checkpoints, logs, result); new unless --resume")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override one setting, e.g. --set train.max_steps=1000 (repeatable)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir from its latest checkpoint, with its stored config")
    train.add_argument("--print-config", action="store_true",
                       help="print the default configuration (every key, documented) and exit")
    train.set_defaults(run=_train)


def _training_module(name: str):
    try:
        return importlib.import_module(f".{name}", __package__)
    except ImportError as err:
        raise InputError(f"Training needs packages that are not installed ({err.name}): {TRAINING_REQUIREMENTS}") from err


def _train(args: argparse.Namespace) -> int:
    if args.print_config:
        print(_training_module("config").default_config_text(), end="")
        return 0
    if not args.output_dir:
        raise InputError("--output-dir is required: the folder where the run keeps its checkpoints, logs and result.")
    run_folder, trainer = _training_module("run_folder"), _training_module("trainer")
    output_dir = Path(args.output_dir)
    config = run_folder.load_run_config(args.config, args.overrides, output_dir, args.resume)
    result = trainer.train(config, output_dir, resume=args.resume)
    if result is not None:
        print(result)
    return 0
