"""The command line, run as a user runs it: a subprocess on the tiny fixture."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from tests.support import REPO


def run_cli(*args, env_extra=None):
    import os

    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "mimic_core", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def models_dir(fixture_dir, tmp_path_factory):
    """A models folder in the authors' layout, made of the fixture's files (converted checkpoint)."""
    root = tmp_path_factory.mktemp("models")
    (root / "mimicbrush").mkdir()
    (root / "depth_model").mkdir()
    done = run_cli("convert", fixture_dir / "mimicbrush_tiny.bin", root / "mimicbrush" / "mimicbrush.safetensors",
                   "--config-dir", fixture_dir)
    assert done.returncode == 0, done.stderr
    (root / "sd-vae-ft-mse").symlink_to(fixture_dir / "vae")
    (root / "depth_model" / "depth_anything_vitb14.pth").symlink_to(fixture_dir / "depth_anything_tiny.pth")
    # the tiny depth model's head count is not in its weights: a sidecar config gives it
    (root / "depth_model" / "depth_anything_vitb14_config.json").symlink_to(fixture_dir / "depth_anything_tiny_config.json")
    return root


def test_edit_writes_an_image_of_the_source_size(fixture_dir, models_dir, tmp_path):
    inputs = fixture_dir / "inputs"
    out = tmp_path / "edited.png"
    done = run_cli("edit", "--source", inputs / "source.png", "--mask", inputs / "mask.png",
                   "--reference", inputs / "reference.png", "--models", models_dir, "--steps", 2,
                   "--keep-shape", "--seed", 4, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "step 2/2" in done.stderr
    with Image.open(out) as image, Image.open(inputs / "source.png") as source:
        assert image.size == source.size and image.mode == "RGB"

    refused = run_cli("edit", "--source", inputs / "source.png", "--mask", inputs / "mask.png",
                      "--reference", inputs / "reference.png", "--models", models_dir, "--steps", 1, "--out", out)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr


def test_edit_with_explicit_files_and_the_config_dir_from_the_environment(fixture_dir, tmp_path):
    inputs = fixture_dir / "inputs"
    done = run_cli("edit", "--source", inputs / "source.png", "--mask", inputs / "mask.png",
                   "--reference", inputs / "reference.png", "--checkpoint", fixture_dir / "mimicbrush_tiny.bin",
                   "--vae", fixture_dir / "vae", "--depth-model", fixture_dir / "depth_anything_tiny_hf",
                   "--steps", 1, "--samples", 2, "--out", tmp_path / "many.png",
                   env_extra={"MIMICBRUSH_CONFIG_DIR": str(fixture_dir)})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "many_0.png").is_file() and (tmp_path / "many_1.png").is_file()


def test_a_missing_model_file_names_the_file_and_where_to_get_it(fixture_dir, tmp_path):
    inputs = fixture_dir / "inputs"
    done = run_cli("edit", "--source", inputs / "source.png", "--mask", inputs / "mask.png",
                   "--reference", inputs / "reference.png", "--models", tmp_path, "--out", tmp_path / "x.png")
    assert done.returncode == 2
    assert "mimicbrush/mimicbrush.safetensors" in done.stderr and "xichenhku/MimicBrush" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_empty_mask_is_refused_before_any_model_loads(fixture_dir, models_dir, tmp_path):
    inputs = fixture_dir / "inputs"
    Image.new("L", (640, 480), 0).save(tmp_path / "empty.png")
    done = run_cli("edit", "--source", inputs / "source.png", "--mask", tmp_path / "empty.png",
                   "--reference", inputs / "reference.png", "--models", models_dir, "--out", tmp_path / "x.png")
    assert done.returncode == 2 and "mask is empty" in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_edit_without_model_options_runs_the_demo_model_and_says_so(tmp_path):
    examples = REPO / "mimic_core" / "demo" / "examples"
    out = tmp_path / "demo.png"
    done = run_cli("edit", "--source", examples / "source.png", "--mask", examples / "mask.png",
                   "--reference", examples / "reference.png", "--steps", "4", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "DEMO model" in done.stderr and "xichenhku/MimicBrush" in done.stderr
    with Image.open(out) as edited, Image.open(examples / "source.png") as source:
        assert edited.size == source.size


def test_a_mask_painted_into_the_source_is_read_as_comfyui_reads_it(tmp_path):
    """A source with its mask painted in (the region to edit transparent, as ComfyUI's mask editor saves
    it), given with --mask left out or naming the source itself, makes the edit a grey mask of the
    same region makes, to the byte."""
    import numpy as np

    from mimic_core.cli import main

    examples = REPO / "mimic_core" / "demo" / "examples"
    with Image.open(examples / "source.png") as source, Image.open(examples / "mask.png") as mask:
        painted = source.convert("RGBA")
        painted.putalpha(Image.fromarray(255 - np.asarray(mask.convert("L"))))
    painted.save(tmp_path / "painted.png")
    common = ["--reference", str(examples / "reference.png"), "--steps", "2", "--seed", "3"]
    runs = {"grey mask": ["--source", str(examples / "source.png"), "--mask", str(examples / "mask.png")],
            "left out": ["--source", str(tmp_path / "painted.png")],
            "the source": ["--source", str(tmp_path / "painted.png"), "--mask", str(tmp_path / "painted.png")]}
    edited = {}
    for name, arguments in runs.items():
        out = tmp_path / f"{name}.png"
        assert main(["edit", *arguments, *common, "--out", str(out)]) == 0
        with Image.open(out) as image:
            edited[name] = np.asarray(image.convert("RGB"))
    assert (edited["grey mask"] != np.asarray(Image.open(examples / "source.png").convert("RGB"))).any()
    assert np.array_equal(edited["left out"], edited["grey mask"])
    assert np.array_equal(edited["the source"], edited["grey mask"])


def test_crop_each_region_counts_its_steps_over_every_region(tmp_path, caplog):
    """Two masked islands at 2 steps: the log counts 1/4 to 4/4 once, not 1/2, 2/2 per island."""
    import logging

    import numpy as np

    from mimic_core.cli import main

    examples = REPO / "mimic_core" / "demo" / "examples"
    islands = np.zeros((256, 256), np.uint8)
    islands[10:40, 10:40] = islands[200:230, 200:230] = 255
    Image.fromarray(islands).save(tmp_path / "islands.png")
    caplog.set_level(logging.INFO, logger="mimic_core")
    assert main(["edit", "--source", str(examples / "source.png"), "--mask", str(tmp_path / "islands.png"),
                 "--reference", str(examples / "reference.png"), "--region", "crop_each", "--steps", "2",
                 "--out", str(tmp_path / "out.png")]) == 0
    assert [record.getMessage() for record in caplog.records if record.getMessage().startswith("step ")] == \
        ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]


def test_a_faint_transparent_part_is_named_as_the_mask_read_from_the_source(tmp_path, capsys):
    from mimic_core.cli import main

    examples = REPO / "mimic_core" / "demo" / "examples"
    with Image.open(examples / "source.png") as source:
        barely = source.convert("RGBA")
    barely.putpixel((5, 5), (0, 0, 0, 254))
    barely.save(tmp_path / "barely.png")
    assert main(["edit", "--source", str(tmp_path / "barely.png"), "--reference", str(examples / "reference.png"),
                 "--out", str(tmp_path / "out.png")]) == 2
    assert "is nowhere more than half transparent (its most transparent pixel has alpha 254 of 255)" in \
        capsys.readouterr().err


def test_a_half_precision_the_cpu_only_emulates_is_warned_about_and_fp32_never(monkeypatch, caplog):
    import torch

    from mimic_core import cpu_precision
    from mimic_core.command_options import resolve_device_dtype

    monkeypatch.setattr(cpu_precision, "native_cpu_precision", lambda dtype: dtype == torch.float32)
    assert resolve_device_dtype("cpu", "bf16") == ("cpu", torch.bfloat16)
    assert "bf16 on this CPU is emulated" in caplog.text and "choose fp32" in caplog.text
    caplog.clear()
    resolve_device_dtype("cpu", "fp32")
    resolve_device_dtype("cpu", "auto")
    assert caplog.text == ""
    assert cpu_precision.slow_precision_warning(torch.bfloat16, "cuda") is None


def test_the_warning_names_the_cpu_features_of_the_precision_chosen(monkeypatch):
    """fp16 on a CPU with AVX512-BF16 only is emulated: the warning names what fp16 needs, not bf16's features."""
    import torch

    from mimic_core import cpu_precision

    monkeypatch.setattr(cpu_precision, "native_cpu_precision", lambda dtype: dtype != torch.float16)
    fp16 = cpu_precision.slow_precision_warning(torch.float16, "cpu")
    assert "native fp16 needs AVX512-FP16 or AMX-FP16" in fp16 and "BF16" not in fp16
    assert cpu_precision.slow_precision_warning(torch.bfloat16, "cpu") is None
    monkeypatch.setattr(cpu_precision, "native_cpu_precision", lambda dtype: dtype == torch.float32)
    assert "native bf16 needs AVX512-BF16 or AMX," in cpu_precision.slow_precision_warning(torch.bfloat16, "cpu")
