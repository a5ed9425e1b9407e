"""Training end to end on the CPU: tiny models built here, synthetic videos and images.

A short run lowers the loss on fixed batches and exports a checkpoint the engine loads and edits
with; an interrupted and resumed run ends bit-identical to an uninterrupted one; two processes
launched through accelerate train together; the SD-1.5 starting point, LoRA, gradient
checkpointing and mixed precision work; bad configurations and folders are refused clearly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file
from torch.utils.data import default_collate
from transformers import (CLIPVisionConfig, CLIPVisionModelWithProjection, DepthAnythingConfig,
                          DepthAnythingForDepthEstimation, Dinov2Config)

from mimic_core.checkpoint import read_checkpoint
from mimic_core.cli import main as cli_main
from mimic_core.components import DepthGuider, ImageProjection, reference_unet_optional_keys
from mimic_core.models import load_models
from mimic_core.pipeline import MimicBrushPipeline
from mimic_core.shape_control import blank_depth_map
from mimic_core.training.config import ConfigError, load_config
from mimic_core.training.data_files import IMAGE_SUFFIXES, VIDEO_SUFFIXES, list_files
from mimic_core.training.dataset import PairDataset
from mimic_core.training.export import export_checkpoint
from mimic_core.training.init_models import load_starting_models
from mimic_core.training.objective import batch_loss, noise_scheduler, sample_timesteps, training_noise
from mimic_core.training.run_folder import load_run_config
from mimic_core.training.trainer import build_networks, train
from mimic_core.training.video_pairs import PairSettings, index_videos
from tests.support import REPO, as_image_tensor
from tests.test_training_data import crossfade_video, textured_image


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; each in-process run here is a new process's run."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield


def tiny_unet(in_channels: int) -> UNet2DConditionModel:
    """The SD-1.5 layout (cross-attention down blocks, plain last down block, mirrored up blocks)
    at two levels and a few channels."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)


def tiny_clip() -> CLIPVisionModelWithProjection:
    return CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                          num_attention_heads=2, image_size=224, patch_size=32,
                                                          projection_dim=8))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Synthetic data and tiny models: a MimicBrush checkpoint, an SD VAE and a Depth Anything."""
    root = tmp_path_factory.mktemp("training")
    (root / "videos").mkdir()
    (root / "images").mkdir()
    for seed in range(2):
        crossfade_video(root / "videos" / f"clip{seed}.avi", seed=seed)
    rng = np.random.default_rng(7)
    for k in range(3):
        cv2.imwrite(str(root / "images" / f"photo{k}.png"), textured_image(rng, 100, 80))
    labels = np.zeros((100, 80), dtype=np.uint8)
    labels[20:70, 10:60] = 1
    cv2.imwrite(str(root / "images" / "photo0.mask.png"), labels)

    torch.manual_seed(0)
    parts = {"unet": tiny_unet(13), "referencenet": tiny_unet(4), "image_encoder": tiny_clip(),
             "image_proj": ImageProjection(16, 16),
             "depth_guider": DepthGuider(conditioning_embedding_channels=4, conditioning_channels=1,
                                         block_out_channels=(4, 4, 4, 4))}
    checkpoint = export_checkpoint(parts, root / "start")
    AutoencoderKL(block_out_channels=(4, 4, 4, 4), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=2,
                  latent_channels=4, sample_size=64).save_pretrained(root / "vae")
    backbone = Dinov2Config(hidden_size=8, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=518,
                            patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, neck_hidden_sizes=[4, 4, 4, 4], fusion_hidden_size=4, head_hidden_size=4,
        reassemble_hidden_size=8, patch_size=14)).save_pretrained(root / "depth")
    return {"root": root, "checkpoint": checkpoint, "vae": root / "vae", "depth": root / "depth"}


def settings_for(workspace, *extra: str) -> list[str]:
    return [
        f"data.videos=[{workspace['root'] / 'videos'}]", f"data.images=[{workspace['root'] / 'images'}]",
        "data.resolution=64", "data.ssim_size=64", "data.frames_per_video=8", "data.ssim_min=0.3",
        "data.ssim_max=0.9", "data.segment_probability=0.3", "data.num_workers=0",
        f"model.checkpoint={workspace['checkpoint']}", f"model.vae={workspace['vae']}",
        f"model.depth_model={workspace['depth']}",
        "train.total_batch_size=2", "train.batch_size_per_device=2", "train.learning_rate=2e-3", "train.log_every=1",
        *extra,
    ]


def fixed_batch_losses(config, checkpoint: Path) -> list[float]:
    """Losses of ``checkpoint`` on four fixed batches (samples never trained on), fixed noise."""
    config = load_config(overrides=[f"model.checkpoint={checkpoint}"], base=config.to_dict())
    networks, vae, depth_model = build_networks(config)
    settings = PairSettings(config.data.ssim_min, config.data.ssim_max, config.data.frames_per_video,
                            config.data.ssim_size)
    videos = index_videos(list_files(config.data.videos, VIDEO_SUFFIXES, "v", "k"), checkpoint.parent / "cache",
                          settings).videos
    dataset = PairDataset(config, videos, list_files(config.data.images, IMAGE_SUFFIXES, "i", "k"))
    blank, scheduler = blank_depth_map(depth_model), noise_scheduler()
    losses = []
    with torch.no_grad():
        for k in range(4):
            batch = default_collate([dataset[10 ** 6 + 2 * k], dataset[10 ** 6 + 2 * k + 1]])
            batch["keep_reference"][:] = True
            losses.append(batch_loss(networks, batch, vae, depth_model, blank, scheduler,
                                     torch.Generator().manual_seed(k)).item())
    networks.reference.remove()
    return losses


def edit_with(checkpoint: Path, workspace) -> torch.Tensor:
    models = load_models(checkpoint, workspace["vae"], workspace["depth"])
    rng = np.random.default_rng(8)
    source, reference = textured_image(rng, 64, 64), textured_image(rng, 64, 64)
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    result = MimicBrushPipeline(models).edit(as_image_tensor(source), mask, as_image_tensor(reference), steps=2,
                                             working_size=64, seed=1, keep_shape=True)
    return result.images


def test_a_short_run_lowers_the_loss_and_exports_a_checkpoint_the_engine_edits_with(workspace, tmp_path):
    config = load_config(overrides=settings_for(workspace, "train.max_steps=30", "train.checkpoint_every=15"))
    result = train(config, tmp_path / "run")
    assert result == tmp_path / "run" / "final" / "mimicbrush.safetensors"

    before = fixed_batch_losses(config, workspace["checkpoint"])
    after = fixed_batch_losses(config, result)
    print(f"fixed-batch loss before {np.mean(before):.4f} after {np.mean(after):.4f}")
    assert np.mean(after) < 0.8 * np.mean(before)

    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 31))
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").iterdir())] == ["step_00000015",
                                                                                     "step_00000030"]

    edited, original = edit_with(result, workspace), edit_with(workspace["checkpoint"], workspace)
    assert (edited - original).abs().max() > 0.05

    # the authors' format: five parts, the reference U-Net without the keys they never stored
    exported = read_checkpoint(result.with_suffix(".bin"), result.parent)
    start = read_checkpoint(workspace["checkpoint"])
    full_reference = set(tiny_unet(4).state_dict())
    assert set(exported.state_dicts["referencenet"]) == full_reference - reference_unet_optional_keys(tiny_unet(4))
    assert "vision_model.embeddings.position_ids" in exported.state_dicts["image_encoder"]
    for part in ("unet", "referencenet", "image_encoder", "image_proj", "depth_guider"):
        changed = [k for k, v in exported.state_dicts[part].items() if not torch.equal(v, start.state_dicts[part][k])]
        assert changed, part
    last_clip_layer = [k for k in exported.state_dicts["image_encoder"] if ".layers.1." in k]
    assert all(torch.equal(exported.state_dicts["image_encoder"][k], start.state_dicts["image_encoder"][k])
               for k in last_clip_layer)  # its output is never used: frozen
    from_bin = load_models(result.with_suffix(".bin"), workspace["vae"], config_dir=result.parent)
    assert torch.equal(from_bin.unet.conv_in.weight, load_models(result, workspace["vae"]).unet.conv_in.weight)


def test_a_resumed_run_continues_from_the_same_step_with_the_same_state(workspace, tmp_path):
    """Two micro-batches of one sample per step, so gradient accumulation is part of what resumes."""
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    accumulate = ("train.batch_size_per_device=1", "train.checkpoint_every=2")
    train(load_config(overrides=settings_for(workspace, "train.max_steps=4", *accumulate)), whole)
    train(load_config(overrides=settings_for(workspace, "train.max_steps=2", *accumulate)), halves)
    with (halves / "log.jsonl").open("a") as log:  # a step logged after the checkpoint by a run that then died
        log.write(json.dumps({"step": 3, "loss": 9.0}) + "\n")
    resumed = load_run_config(None, ["train.max_steps=4"], halves, resume=True)
    assert resumed.train.max_steps == 4 and resumed.model.checkpoint == str(workspace["checkpoint"])
    train(resumed, halves, resume=True)

    first = whole / "checkpoints" / "step_00000004"
    second = halves / "checkpoints" / "step_00000004"
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    optimiser_a = torch.load(first / "optimizer.bin", weights_only=True)
    optimiser_b = torch.load(second / "optimizer.bin", weights_only=True)
    assert optimiser_a["state"].keys() == optimiser_b["state"].keys()
    for key, state in optimiser_a["state"].items():
        assert all(torch.equal(torch.as_tensor(value), torch.as_tensor(optimiser_b["state"][key][name]))
                   for name, value in state.items())
    logs = [[json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] for run in (whole, halves)]
    assert [entry["step"] for entry in logs[1]] == [1, 2, 3, 4]
    assert [entry["loss"] for entry in logs[0]] == [entry["loss"] for entry in logs[1]]

    exported = halves / "final" / "mimicbrush.safetensors"
    exported.unlink()
    assert train(load_run_config(None, [], halves, resume=True), halves, resume=True) == exported  # export only
    assert len((halves / "log.jsonl").read_text().splitlines()) == 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_launched_through_accelerate_train_together(workspace, fixture_dir, tmp_path):
    """Data parallelism on the CPU (gloo), starting from the authors' format: the tiny fixture .bin."""
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"model": {"checkpoint": str(fixture_dir / "mimicbrush_tiny.bin"),
                                            "config_dir": str(fixture_dir), "vae": str(fixture_dir / "vae")}}))
    overrides = [arg for item in settings_for(workspace, "train.total_batch_size=4", "train.max_steps=2",
                                              "train.checkpoint_every=2")
                 if not item.startswith(("model.checkpoint", "model.vae")) for arg in ("--set", item)]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "mimic_core", "train", "--config", str(config),
               "--output-dir", str(tmp_path / "run"), *overrides]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) x 2 per device x 1 accumulation steps = 4 samples per step" in done.stderr
    result = Path(done.stdout.strip().splitlines()[-1])
    assert result == tmp_path / "run" / "final" / "mimicbrush.safetensors"
    models = load_models(result, fixture_dir / "vae", fixture_dir / "depth_anything_tiny.pth")
    start = load_models(fixture_dir / "mimicbrush_tiny.bin", fixture_dir / "vae", config_dir=fixture_dir)
    assert not torch.equal(models.unet.conv_in.weight, start.unet.conv_in.weight)
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "random_states_1.pkl").is_file()


def test_training_from_sd15_parts_widens_the_inpainting_unet(workspace, tmp_path):
    torch.manual_seed(1)
    inpainting, base, clip = tiny_unet(9), tiny_unet(4), tiny_clip()
    inpainting.save_pretrained(tmp_path / "sd15-inpainting" / "unet")
    base.save_pretrained(tmp_path / "sd15" / "unet")
    AutoencoderKL.from_pretrained(workspace["vae"]).save_pretrained(tmp_path / "sd15" / "vae")
    clip.save_pretrained(tmp_path / "clip")
    settings = settings_for(workspace, "model.init=sd15", f"model.sd15_inpainting={tmp_path / 'sd15-inpainting'}",
                            f"model.sd15={tmp_path / 'sd15'}", f"model.image_encoder={tmp_path / 'clip'}",
                            "model.vae=null", "train.max_steps=2")
    config = load_config(overrides=settings)

    models = load_starting_models(config.model)
    weight = models.unet.conv_in.weight
    assert weight.shape[1] == 13 and models.unet.config.in_channels == 13
    assert torch.equal(weight[:, :9], inpainting.conv_in.weight) and weight[:, 9:].abs().min() > 0
    assert not models.depth_guider.conv_out.weight.any()  # step 0 computes SD inpainting exactly
    assert torch.equal(models.referencenet.conv_in.weight, base.conv_in.weight)
    assert models.image_proj.projector.in_features == 16

    result = train(config, tmp_path / "run")
    loaded = load_models(result, workspace["vae"], workspace["depth"])
    assert loaded.unet.config.in_channels == 13
    assert loaded.depth_guider.conv_out.weight.any()  # depth reaches the U-Net and trains its guider


def test_lora_with_bf16_mixed_precision_trains_adapters_only_and_the_export_merges_them(workspace, tmp_path):
    config = load_config(overrides=settings_for(workspace, "lora.enabled=true", "lora.rank=2", "train.max_steps=2",
                                                "train.learning_rate=1e-2", "train.mixed_precision=bf16"))
    result = train(config, tmp_path / "run")
    trained, start = read_checkpoint(result), read_checkpoint(workspace["checkpoint"])
    unet, before = trained.state_dicts["unet"], start.state_dicts["unet"]
    assert not any("lora" in key for key in unet)
    changed = {key for key in unet if not torch.equal(unet[key], before[key])}
    assert changed and all(key.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))
                           for key in changed)
    assert not torch.equal(trained.state_dicts["depth_guider"]["conv_out.weight"],
                           start.state_dicts["depth_guider"]["conv_out.weight"])  # not adapted: fully trained


def test_gradient_checkpointing_gives_the_same_step(workspace):
    def loss_and_grads(*extra):
        config = load_config(overrides=settings_for(workspace, *extra))
        networks, vae, depth_model = build_networks(config)
        checkpointing = "train.gradient_checkpointing=true" in extra
        assert networks.unet.is_gradient_checkpointing == networks.referencenet.is_gradient_checkpointing == checkpointing
        assert networks.image_encoder.vision_model.encoder.gradient_checkpointing == checkpointing
        assert (networks.reference.bank.final_block is None) == checkpointing
        settings = PairSettings(0.3, 0.9, 8, 64)
        videos = index_videos(list_files(config.data.videos, VIDEO_SUFFIXES, "v", "k"),
                              workspace["root"] / "cache", settings).videos
        dataset = PairDataset(config, videos, list_files(config.data.images, IMAGE_SUFFIXES, "i", "k"))
        batch = default_collate([dataset[0], dataset[1], dataset[2]])
        batch["keep_reference"] = torch.tensor([True, False, True])
        loss = batch_loss(networks, batch, vae, depth_model, blank_depth_map(depth_model), noise_scheduler(),
                          torch.Generator().manual_seed(0))
        loss.backward()
        grads = {name: p.grad.clone() for name, p in networks.named_parameters() if p.grad is not None}
        networks.reference.remove()
        return loss.item(), grads

    plain_loss, plain = loss_and_grads()
    checkpointed_loss, checkpointed = loss_and_grads("train.gradient_checkpointing=true")
    assert checkpointed.keys() == plain.keys()
    assert any(name.startswith("referencenet.") for name in plain)
    assert abs(checkpointed_loss - plain_loss) < 1e-6
    assert all(torch.allclose(checkpointed[k], plain[k], atol=1e-6, rtol=1e-4) for k in plain)


def test_bad_settings_and_folders_are_refused_with_the_key_and_the_fix(workspace, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"'train.learning_rat'.*did you mean 'learning_rate'"):
        load_config(overrides=settings_for(workspace, "train.learning_rat=1e-4"))
    with pytest.raises(ConfigError, match=r"'masking.matched_probability'.*\[0, 1\].*1.5"):
        load_config(overrides=settings_for(workspace, "masking.matched_probability=1.5"))
    with pytest.raises(ConfigError, match=r"'train.total_batch_size' \(6\).*multiple.*\(4\)"):
        load_config(overrides=settings_for(workspace, "train.total_batch_size=6", "train.batch_size_per_device=4"))
    with pytest.raises(ConfigError, match=r"'train.timestep_sampling'.*uniform, cubic.*'cosine'"):
        load_config(overrides=settings_for(workspace, "train.timestep_sampling=cosine"))
    with pytest.raises(ConfigError, match=r"'train.noise_offset_region'.*image, mask.*'box'"):
        load_config(overrides=settings_for(workspace, "train.noise_offset_region=box"))
    with pytest.raises(ConfigError, match=r"'model.checkpoint' is needed"):
        load_config(overrides=settings_for(workspace, "model.checkpoint=null"))

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--output-dir", str(tmp_path / "new"), "--set", "data.resolution=100"], "must be a multiple of 64"),
        (["--output-dir", str(tmp_path / "taken")], "exists and is not empty"),
        (["--output-dir", str(tmp_path / "new"), "--set", f"data.images=[{tmp_path / 'empty'}]",
          "--set", "data.videos=[]"], "No images were found"),
        (["--output-dir", str(tmp_path / "empty"), "--resume"], "Nothing to resume"),
    ]
    for args, message in cases:
        code = cli_main(["train", *[a for item in settings_for(workspace) for a in ("--set", item)], *args])
        error = capsys.readouterr().err
        assert code == 2 and message in error and "Traceback" not in error, (args, error)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "new").exists()

    assert cli_main(["train", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "learning_rate: 1.0e-5" in printed and "(paper" in printed


def test_timesteps_are_drawn_uniformly_or_cubically_towards_the_noisy_end():
    generator = torch.Generator().manual_seed(0)
    uniform = sample_timesteps(20000, 1000, "uniform", generator).double()
    cubic = sample_timesteps(20000, 1000, "cubic", generator).double()
    assert uniform.min() >= 0 and uniform.max() <= 999 and cubic.min() >= 0 and cubic.max() <= 999
    assert abs((uniform >= 500).double().mean() - 0.5) < 0.02
    # P(t >= 1000 x) = P(u <= (1 - x)^(1/3)) = (1 - x)^(1/3): 0.794 in the noisier half, 0.464 beyond 900
    assert abs((cubic >= 500).double().mean() - 0.5 ** (1 / 3)) < 0.02
    assert abs((cubic >= 900).double().mean() - 0.1 ** (1 / 3)) < 0.02


def test_offset_noise_adds_one_constant_per_sample_and_channel_over_the_image_or_the_mask():
    shape = (256, 4, 16, 16)
    plain = training_noise(shape, 0.0, None, torch.Generator().manual_seed(1))
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    image = training_noise(shape, 0.5, None, torch.Generator().manual_seed(1))
    offsets = image - plain
    assert torch.allclose(offsets, offsets[..., :1, :1].expand_as(offsets), atol=1e-6)  # constant over each latent
    assert abs(offsets[..., 0, 0].std().item() - 0.5) < 0.05
    region = torch.zeros(256, 1, 16, 16)
    region[..., 4:12, 4:12] = 1
    masked = training_noise(shape, 0.5, region, torch.Generator().manual_seed(1))
    assert torch.equal(masked[..., :4, :], plain[..., :4, :])  # plain noise outside the mask
    assert torch.allclose(masked[..., 4:12, 4:12] - plain[..., 4:12, 4:12], offsets[..., 4:12, 4:12], atol=1e-6)


def test_the_train_command_registers_without_importing_anything_heavy():
    """cli.py imports the command module for every command: it must cost nothing, need nothing."""
    code = ("import argparse, sys; from mimic_core.training.command import add_command; "
            "add_command(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('torch', 'accelerate', 'peft', 'kornia', 'yaml', 'mimic_core.training.trainer') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
