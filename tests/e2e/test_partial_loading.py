"""Today's ComfyUI on a GPU short of memory: model management decides to load the pack's networks
only partly. Every tensor must still be on the compute device when a step runs (on each host)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.comfy_host import PACK_NAME
from tests.support import REPO

SCRIPT = REPO / "tests" / "e2e" / "short_memory_load.py"


@pytest.fixture(scope="module")
def loads(comfy_host) -> dict[str, dict]:
    """Where the tensors end up with plain loading (the control) and the pack's, one process each,
    run side by side."""
    runs = {how: subprocess.Popen([str(comfy_host.root / "python"), str(SCRIPT), PACK_NAME, how], cwd=comfy_host.comfy,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for how in ("plain", "pack")}
    reports = {}
    for how, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        reports[how] = json.loads(out.strip().splitlines()[-1])
    return reports


def test_the_simulated_small_gpu_makes_comfyui_load_the_networks_partly(loads):
    """The control: without the pack's load, some tensors stay on the CPU, so the next test tests something."""
    assert loads["plain"]["off_device"] > 0, loads["plain"]


def test_the_pack_loads_every_tensor_on_the_device_and_a_step_runs_there(loads):
    assert loads["pack"] == {"off_device": 0, "tensors": loads["plain"]["tensors"], "step": "ok"}, loads["pack"]
