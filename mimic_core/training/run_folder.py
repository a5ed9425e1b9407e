"""A training run's folder: its configuration, checkpoints and log.

::

    config.yaml            the resolved configuration (what --resume continues with)
    log.jsonl              one line per logged step: step, loss, learning rate, samples per second
    logs/                  TensorBoard events, when tensorboard is installed
    pair_cache/            the video pair choices (unless data.pair_cache points elsewhere)
    checkpoints/step_N/    accelerate state (weights, optimiser, random states) + trainer_state.json
    final/                 mimicbrush.bin + <part>_config.json + mimicbrush.safetensors

With several machines the folder must be on a filesystem they share. Checkpoints are written under
a temporary name and renamed when complete, so ``--resume`` never picks a half-written one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger

from ..errors import InputError
from .config import TrainingConfig, config_yaml, load_config
from .export import write_text

logger = get_logger(__name__)  # logs on the main process only

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
STATE_FILE = "trainer_state.json"
CHECKPOINTS = "checkpoints"
EXPORT_DIR = "final"


def load_run_config(config_file: str | None, overrides: list[str], output_dir: Path, resume: bool) -> TrainingConfig:
    """A new run's config (defaults, ``config_file``, overrides), or a resumed run's stored one."""
    if not resume:
        return load_config(config_file, overrides)
    stored = output_dir / CONFIG_FILE
    if not stored.is_file():
        raise InputError(f"Nothing to resume in '{output_dir}': it holds no {CONFIG_FILE}. Start the run "
                         "without --resume.")
    if config_file is not None:
        raise InputError(f"--resume continues with the run's stored configuration ({stored}); drop --config "
                         "and change values with --set KEY=VALUE.")
    return load_config(overrides=overrides, base=yaml.safe_load(stored.read_text()))


def check_output_dir(output_dir: Path, resume: bool) -> None:
    """A new run needs a new (or empty) folder: never mix two runs or overwrite a user's files."""
    if resume:
        return
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise InputError(f"The output folder '{output_dir}' exists and is not empty; choose a new --output-dir, "
                         "or pass --resume to continue the run in it.")


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    found = []
    for folder in (output_dir / CHECKPOINTS).glob("step_*"):
        state = folder / STATE_FILE
        if folder.is_dir() and state.is_file():
            found.append((json.loads(state.read_text())["step"], folder))
    return sorted(found)


class RunLog:
    """Mean loss and speed every ``every`` steps (and at the last): the log, ``log.jsonl`` and the
    trackers (TensorBoard)."""

    def __init__(self, accelerator: Accelerator, path: Path, every: int, samples_per_step: int):
        self.accelerator = accelerator
        self.path = path
        self.every = every
        self.samples_per_step = samples_per_step
        self.losses: list[float] = []
        self.since = time.monotonic()

    def add(self, step: int, loss: float, learning_rate: float, last: bool) -> None:
        self.losses.append(loss)
        if step % self.every and not last:
            return
        now = time.monotonic()
        record = {"step": step, "loss": float(np.mean(self.losses)), "learning_rate": learning_rate,
                  "samples_per_second": len(self.losses) * self.samples_per_step / max(now - self.since, 1e-9)}
        self.losses, self.since = [], now
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        logger.info("step %d: loss %.5f (%.1f samples/s)", step, record["loss"], record["samples_per_second"])


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> None:
    """Save under a temporary name, rename when complete, keep the newest ``keep``."""
    final = output_dir / CHECKPOINTS / f"step_{step:08d}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps({"step": step}))
        partial.rename(final)
        for _, old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()


def start_run(accelerator: Accelerator, config: TrainingConfig, output_dir: Path, resume: bool) -> int:
    """Write the run's config; on resume restore the latest checkpoint. Returns the first step."""
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text(output_dir / CONFIG_FILE, config_yaml(config))
    accelerator.wait_for_everyone()
    found = checkpoints(output_dir) if resume else []
    if resume and not found:
        logger.warning("No checkpoint in %s yet: starting from step 0.", output_dir)
    start_step = 0
    if found:
        start_step, folder = found[-1]
        accelerator.load_state(str(folder))
        logger.info("Resumed from %s (step %d).", folder, start_step)
    log = output_dir / LOG_FILE
    if accelerator.is_main_process and log.is_file():
        kept = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= start_step]
        write_text(log, "".join(f"{line}\n" for line in kept))  # steps after the checkpoint run again
    return start_step
