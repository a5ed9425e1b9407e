"""Today's ComfyUI on a GPU short of memory: model management decides to load the pack's networks
only partly. Every tensor must still be on the compute device when a step runs (on each host)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.comfy_host import PACK_NAME
from tests.support import REPO

SCRIPT = REPO / "tests" / "e2e" / "short_memory_load.py"


def load_short_of_memory(comfy_host, how: str) -> dict:
    done = subprocess.run([str(comfy_host.root / "python"), str(SCRIPT), PACK_NAME, how], cwd=comfy_host.comfy,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def plain_partial_load(comfy_host) -> dict:
    return load_short_of_memory(comfy_host, "plain")


def test_the_simulated_small_gpu_makes_comfyui_load_the_networks_partly(plain_partial_load):
    """The control: without the pack's load, some tensors stay on the CPU, so the next test tests something."""
    assert plain_partial_load["off_device"] > 0, plain_partial_load


def test_the_pack_loads_every_tensor_on_the_device_and_a_step_runs_there(comfy_host, plain_partial_load):
    report = load_short_of_memory(comfy_host, "pack")
    assert report == {"off_device": 0, "tensors": plain_partial_load["tensors"], "step": "ok"}, report
