"""The training loop: accelerate data parallelism (one GPU to many machines), mixed precision,
gradient accumulation, the data and the networks as configured, and the export at the end.

A step is bit-for-bit the same whether the run was interrupted before it or not: samples are a
function of their index (``dataset``), and each micro-batch's noise, timesteps and VAE posterior
draws come from a generator seeded with (seed, step, micro-batch, process). The run's folder,
checkpoints and logs: ``run_folder``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import InputError
from ..shape_control import blank_depth_map
from .config import TrainingConfig
from .data_files import IMAGE_SUFFIXES, VIDEO_SUFFIXES, list_files
from .dataset import PairDataset, StepBatches
from .export import export_checkpoint
from .init_models import load_starting_models, own_memory
from .lora import add_lora, lora_parameters
from .objective import TrainingNetworks, batch_loss, noise_scheduler, unused_parameters
from .run_folder import EXPORT_DIR, LOG_FILE, RunLog, check_output_dir, save_checkpoint, start_run
from .video_pairs import PairSettings, describe, index_videos, require_videos, scan_videos

logger = get_logger(__name__)  # logs on the main process only


def accumulation_steps(config: TrainingConfig, processes: int) -> int:
    per_step = config.train.batch_size_per_device * processes
    if config.train.total_batch_size % per_step:
        raise InputError(
            f"train.total_batch_size ({config.train.total_batch_size}) is not a multiple of "
            f"train.batch_size_per_device ({config.train.batch_size_per_device}) x {processes} processes; "
            "change one of them so that the accumulation steps come out whole.")
    return config.train.total_batch_size // per_step


def step_generator(seed: int, step: int, micro: int, rank: int, device: torch.device) -> torch.Generator:
    value = int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))
    return torch.Generator(device=device).manual_seed(value)


def find_data(config: TrainingConfig) -> tuple[list[Path], list[Path]]:
    """The video and image files the configuration names (an error when a folder holds none)."""
    return (list_files(config.data.videos, VIDEO_SUFFIXES, "videos", "data.videos"),
            list_files(config.data.images, IMAGE_SUFFIXES, "images", "data.images"))


def build_dataset(config: TrainingConfig, video_files: list[Path], images: list[Path], output_dir: Path,
                  accelerator: Accelerator) -> PairDataset:
    """Scan the videos for pairs (shared among the processes, cached) and make the dataset."""
    data = config.data
    videos = []
    if video_files:
        settings = PairSettings(data.ssim_min, data.ssim_max, data.frames_per_video, data.ssim_size)
        cache = Path(data.pair_cache) if data.pair_cache else output_dir / "pair_cache"
        scan_videos(video_files, cache, settings, accelerator.process_index, accelerator.num_processes)
        accelerator.wait_for_everyone()
        index = index_videos(video_files, cache, settings)
        logger.info("Videos: %s.", describe(index, settings))
        require_videos(index, settings)
        videos = index.videos
    logger.info("Images: %d.", len(images))
    dataset = PairDataset(config, videos, images)
    if dataset.video_share() != data.video_fraction:
        logger.warning("Only %s given: every sample is a %s pair (data.video_fraction %.2f does not apply).",
                       "videos" if videos else "images", "video" if videos else "image", data.video_fraction)
    return dataset


def build_networks(config: TrainingConfig, device: torch.device | str = "cpu"):
    """The trained networks on ``device`` (parts frozen or adapted as configured), the VAE and the
    depth model (frozen)."""
    models = load_starting_models(config.model)
    networks = TrainingNetworks(models.unet, models.referencenet, models.image_encoder, models.image_proj,
                                models.depth_guider, config.data.resolution, config.train.gradient_checkpointing)
    for part, module in networks.parts().items():
        module.requires_grad_(False)
        if not getattr(config.train.parts, part):
            continue
        unused = unused_parameters(part, module)
        if config.lora.enabled and part in config.lora.parts:
            add_lora(module, part, config.lora, unused)
            module.requires_grad_(False)
            for parameter in lora_parameters(module):
                parameter.requires_grad_(True)
        else:
            for name, parameter in module.named_parameters():
                parameter.requires_grad_(name not in unused)
    networks.train().to(device)
    if torch.device(device).type == "cpu":
        own_memory(networks)
    return networks, models.vae.to(device), models.depth_model.to(device)


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def make_accelerator(config: TrainingConfig, output_dir: Path) -> Accelerator:
    """accelerate's process group, from one CPU to many machines.

    ``cpu`` is set when there is no CUDA device: without it a CPU run launched as several processes
    would give each process its own single-process run. Unused parameters are searched for by DDP
    because a batch whose every sample dropped its reference gives the reference U-Net no gradient
    (the parameters that never get one are frozen: ``objective.unused_parameters``).
    """
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.train.mixed_precision,
        log_with="tensorboard" if importlib.util.find_spec("tensorboard") is not None else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise InputError(f"{launched} processes were launched but accelerate set up {accelerator.num_processes}; "
                         "launch with 'accelerate launch' or torchrun (docs/training.md).")
    return accelerator


def train(config: TrainingConfig, output_dir: str | Path, resume: bool = False) -> Path | None:
    """Run (or continue) a training run in ``output_dir``; returns the exported ``.safetensors``
    on the main process (None on the others)."""
    output_dir = Path(output_dir).resolve()
    check_output_dir(output_dir, resume)
    accelerator = make_accelerator(config, output_dir)
    accumulation = accumulation_steps(config, accelerator.num_processes)
    logger.info("%d process(es) x %d per device x %d accumulation steps = %d samples per step.",
                accelerator.num_processes, config.train.batch_size_per_device, accumulation,
                config.train.total_batch_size)
    # Nothing is written before the data and the models are found: a mistake leaves no half-made run.
    video_files, images = find_data(config)
    networks, vae, depth_model = build_networks(config, accelerator.device)
    trainable = [parameter for parameter in networks.parameters() if parameter.requires_grad]
    adapted = sum(1 for name, _ in networks.named_modules() if name.endswith(".lora_A"))
    logger.info("Training %d tensors (%.1fM values%s).", len(trainable), sum(p.numel() for p in trainable) / 1e6,
                f"; LoRA rank {config.lora.rank} on {adapted} layers" if adapted else "")
    optimizer = torch.optim.Adam(trainable, lr=config.train.learning_rate,
                                 betas=(config.train.adam_beta1, config.train.adam_beta2),
                                 eps=config.train.adam_epsilon, weight_decay=config.train.weight_decay)
    networks, optimizer = accelerator.prepare(networks, optimizer)
    start_step = start_run(accelerator, config, output_dir, resume)
    dataset = build_dataset(config, video_files, images, output_dir, accelerator)
    if accelerator.log_with:
        accelerator.init_trackers("mimicbrush", config=_flat(config.to_dict()))
    loader = DataLoader(dataset, batch_sampler=StepBatches(start_step, config.train.batch_size_per_device, accumulation,
                                                           accelerator.process_index, accelerator.num_processes),
                        num_workers=config.data.num_workers, pin_memory=accelerator.device.type == "cuda")
    run_steps(accelerator, config, output_dir, networks, optimizer, trainable, (vae, depth_model), loader,
              start_step, accumulation)

    result = None
    if accelerator.is_main_process:
        result = export_checkpoint(accelerator.unwrap_model(networks).parts(), output_dir / EXPORT_DIR)
        logger.info("Exported %s", result)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    accelerator.unwrap_model(networks).reference.remove()
    return result


def run_steps(accelerator: Accelerator, config: TrainingConfig, output_dir: Path, networks, optimizer, trainable,
              frozen: tuple, loader: DataLoader, start_step: int, accumulation: int) -> None:
    """Optimiser steps from ``start_step`` to ``train.max_steps``, with logging and checkpoints."""
    vae, depth_model = frozen
    blank_depth = blank_depth_map(depth_model)
    scheduler = noise_scheduler()
    run_log = RunLog(accelerator, output_dir / LOG_FILE, config.train.log_every, config.train.total_batch_size)
    max_steps = config.train.max_steps
    if start_step >= max_steps:
        logger.info("The run is at step %d of %d: nothing to train.", start_step, max_steps)
        return
    batches = iter(loader)
    progress = tqdm(total=max_steps, initial=min(start_step, max_steps), unit="step", desc="training",
                    disable=not accelerator.is_local_main_process)
    for step in range(start_step, max_steps):
        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(accumulation):
            batch = {key: value.to(accelerator.device, non_blocking=True) for key, value in next(batches).items()}
            generator = step_generator(config.train.seed, step, micro, accelerator.process_index, accelerator.device)
            synchronise = micro == accumulation - 1
            with contextlib.nullcontext() if synchronise else accelerator.no_sync(networks):
                loss = batch_loss(networks, batch, vae, depth_model, blank_depth, scheduler, generator,
                                  config.train.timestep_sampling, config.train.noise_offset,
                                  config.train.noise_offset_region)
                accelerator.backward(loss / accumulation)
            step_loss += loss.detach() / accumulation
        if config.train.max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable, config.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
        progress.update(1)
        progress.set_postfix(loss=f"{mean_loss:.4f}")
        run_log.add(done, mean_loss, config.train.learning_rate, last=done == max_steps)
        if done % config.train.checkpoint_every == 0 or done == max_steps:
            save_checkpoint(accelerator, output_dir, done, config.train.keep_checkpoints)
    progress.close()
