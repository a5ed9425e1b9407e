"""Shared test fixtures: the golden fixture (read in place) and the tiny models, loaded once.

Two switches for CI, which runs the suite twice on one commit (at the door with nothing beside
the clone, then with everything): ``MIMICBRUSH_RECORD_PASSED=FILE`` writes the id of every test
that passed to FILE, and ``MIMICBRUSH_ALREADY_PASSED=FILE`` leaves those tests out of the second
run (reported as deselected), so that each test runs once and the two runs together are the suite.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from tests.support import as_image_tensor, read_png, require_fixture

RECORD_PASSED_ENV, ALREADY_PASSED_ENV = "MIMICBRUSH_RECORD_PASSED", "MIMICBRUSH_ALREADY_PASSED"


def pytest_runtest_logreport(report):
    if os.environ.get(RECORD_PASSED_ENV) and report.when == "call" and report.passed:
        with open(os.environ[RECORD_PASSED_ENV], "a") as record:
            record.write(report.nodeid + "\n")


def pytest_collection_modifyitems(config, items):
    if not os.environ.get(ALREADY_PASSED_ENV):
        return
    passed = set(Path(os.environ[ALREADY_PASSED_ENV]).read_text().splitlines())
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid in passed])
    items[:] = [item for item in items if item.nodeid not in passed]


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return require_fixture()


@pytest.fixture(scope="session")
def golden(fixture_dir):
    """name -> dict of golden tensors ("inputs", "on", "off", "refbank")."""
    files = {"inputs": "golden_inputs", "on": "golden_shape_on", "off": "golden_shape_off",
             "refbank": "golden_refbank_step0"}
    return {key: load_file(str(fixture_dir / f"{name}.safetensors")) for key, name in files.items()}


@pytest.fixture(scope="session")
def fixture_images(fixture_dir):
    inputs = fixture_dir / "inputs"
    return {
        "source": read_png(inputs / "source.png"),
        "reference": read_png(inputs / "reference.png"),
        "mask": (read_png(inputs / "mask.png", "L") > 128).astype(np.uint8),
    }


@pytest.fixture(scope="session")
def inputs(fixture_images):
    """The fixture's source, mask and reference as an edit takes them."""
    import torch

    return (as_image_tensor(fixture_images["source"]),
            torch.from_numpy(fixture_images["mask"].astype(np.float32)),
            as_image_tensor(fixture_images["reference"]))


@pytest.fixture(scope="session")
def unets(fixture_dir):
    """An imitative and a reference U-Net of the fixture's architecture with random weights, every
    path non-zero. Tests that install processors or hooks on them remove them again."""
    import json

    import torch
    from diffusers import UNet2DConditionModel

    config = json.loads((fixture_dir / "unet_config.json").read_text())
    torch.manual_seed(0)
    imitative = UNet2DConditionModel.from_config(config).eval()
    reference = UNet2DConditionModel.from_config(dict(config, in_channels=4)).eval()
    for unet in (imitative, reference):  # diffusers zero-initialises some outputs; make every path count
        with torch.no_grad():
            for parameter in unet.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return imitative, reference


@pytest.fixture(scope="session")
def tiny_models(fixture_dir):
    from mimic_core.models import load_models

    return load_models(fixture_dir / "mimicbrush_tiny.bin", fixture_dir / "vae",
                       fixture_dir / "depth_anything_tiny.pth", config_dir=fixture_dir)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_models):
    from mimic_core.pipeline import MimicBrushPipeline

    return MimicBrushPipeline(tiny_models)


@pytest.fixture
def one_thread():
    """Tiny models are all per-operation overhead: one thread is as fast as two, and unlike two it
    does not slow down many times over when other processes share the CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
