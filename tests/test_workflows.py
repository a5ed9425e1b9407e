"""The shipped workflows: both formats up to date with their one description, and consistent."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO


def test_ui_and_api_copies_match_their_description():
    done = subprocess.run([sys.executable, "tools/build_workflows.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_workflow_has_an_api_copy_and_names_shipped_example_images():
    ui = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
    assert ui and ui == sorted(p.name for p in (REPO / "workflows" / "api").glob("*.json"))
    shipped = {p.name for p in (REPO / "workflows" / "inputs").glob("*.png")}
    for name in ui:
        prompt = json.loads((REPO / "workflows" / "api" / name).read_text())
        images = {node["inputs"]["image"] for node in prompt.values() if node["class_type"] == "LoadImage"}
        assert images <= shipped, f"{name} loads {images - shipped}, which the pack does not ship"
