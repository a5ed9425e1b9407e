"""The shipped workflows: both formats up to date with their one description, and consistent."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from tests.support import REPO


def test_ui_and_api_copies_match_their_description():
    done = subprocess.run([sys.executable, "tools/build_workflows.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_workflow_has_an_api_copy_and_loads_only_the_pack_s_own_pictures():
    """A workflow opened from the template browser on a fresh install finds nothing in ComfyUI's
    input folder: its pictures come through the pack's example-image node."""
    ui = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
    assert ui and ui == sorted(p.name for p in (REPO / "workflows" / "api").glob("*.json"))
    shipped = {p.name for p in (REPO / "workflows" / "inputs").glob("*.png")}
    for name in ui:
        prompt = json.loads((REPO / "workflows" / "api" / name).read_text())
        kinds = {node["class_type"] for node in prompt.values()}
        assert not kinds & {"LoadImage", "LoadImageMask"}, f"{name} reads ComfyUI's input folder"
        images = {node["inputs"]["image"] for node in prompt.values() if node["class_type"] == "MimicBrushExampleImage"}
        assert images and images <= shipped, f"{name} loads {images - shipped}, which the pack does not ship"


def test_every_ui_workflow_has_a_jpeg_thumbnail_beside_it():
    """The template browser shows ``<name>.jpg`` beside ``<name>.json``; the end-to-end template test
    checks that each is a picture of that workflow's result."""
    for workflow in sorted((REPO / "workflows").glob("*.json")):
        thumbnail = workflow.with_suffix(".jpg")
        assert thumbnail.is_file(), f"no thumbnail for {workflow.name}: python tools/build_thumbnails.py ARTIFACTS"
        with Image.open(thumbnail) as picture:
            assert picture.format == "JPEG" and min(picture.size) >= 64
