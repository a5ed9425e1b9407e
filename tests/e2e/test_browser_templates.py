"""The shipped UI workflows as a user meets them: listed in ComfyUI's template browser with their
thumbnails, served as shipped, loaded into the page on a host whose input folder is empty (a
fresh install), and run from the page's run button.

ComfyUI 0.3.75 serves the pack's ``workflows/`` folder as templates; the 2024 host has no template
browser, and its users drag the same files in, which is what the test does there. The demo runs
exactly as served; the other workflows name the released model files, so their model widgets are
pointed at the tiny fixture models (and their steps cut) before they are loaded: nothing else changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.e2e.comfy_host import HOST_SCRIPTS, PACK_NAME, ui_for_tiny_host
from tests.support import REPO
from tools.build_thumbnails import thumbnail

UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))

THUMBNAIL_TOLERANCE = 6.0
"""Mean absolute difference (0..255) allowed between a shipped thumbnail and one made from this run's
results: JPEG's loss, not another picture."""


def _get(comfy_host, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(comfy_host.url + path, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), b""


def test_the_template_browser_lists_every_ui_workflow_with_its_thumbnail(comfy_host):
    status, _, body = _get(comfy_host, "/api/workflow_templates")
    if not comfy_host.has_template_browser:
        assert status == 404  # no template browser: the README says to drag the files from workflows/
        return
    assert status == 200
    assert sorted(json.loads(body)[PACK_NAME]) == [workflow.stem for workflow in UI_WORKFLOWS]
    for workflow in UI_WORKFLOWS:
        status, kind, picture = _get(comfy_host, f"/api/workflow_templates/{PACK_NAME}/{workflow.stem}.jpg")
        assert status == 200 and kind == "image/jpeg", workflow.stem
        assert picture == workflow.with_suffix(".jpg").read_bytes()


def _served(comfy_host, workflow) -> bytes:
    if not comfy_host.has_template_browser:
        return workflow.read_bytes()
    status, _, body = _get(comfy_host, f"/api/workflow_templates/{PACK_NAME}/{workflow.name}")
    assert status == 200
    return body


def _new_results(comfy_host, workflow: dict, since: float) -> list[Image.Image]:
    """What the run's SaveImage nodes wrote, in node order."""
    results = []
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node["type"] != "SaveImage":
            continue
        prefix = node["widgets_values"][0]
        files = [path for path in (comfy_host.comfy / "output").glob(f"{prefix}_*.png") if path.stat().st_mtime >= since]
        assert files, f"the run saved nothing under '{prefix}'"
        with Image.open(max(files, key=lambda path: path.stat().st_mtime)) as image:
            results.append(image.convert("RGB"))
    return results


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_each_template_as_served_runs_in_the_browser_on_a_fresh_install(comfy_host, chromium, artifacts_dir,
                                                                         tmp_path, workflow):
    assert not [path for path in (comfy_host.comfy / "input").iterdir() if path.is_file()], \
        "the input folder is not empty: the workflow must run without anything copied there"
    served = _served(comfy_host, workflow)
    assert served == workflow.read_bytes()
    loaded = json.loads(served)
    adapted = tmp_path / workflow.name
    adapted.write_text(json.dumps(ui_for_tiny_host(loaded)))
    shot = artifacts_dir / f"{workflow.stem}_{comfy_host.version}.png"
    started = time.time() - 1
    done = subprocess.run([sys.executable, str(HOST_SCRIPTS / "browser_check.py"), "--queue", comfy_host.url + "/",
                           str(adapted), str(shot)], capture_output=True, text=True, timeout=600)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "missing in the page: none" in done.stdout and "queued run: success" in done.stdout
    assert shot.is_file()

    results = _new_results(comfy_host, loaded, started)
    for index, result in enumerate(results):
        result.save(artifacts_dir / f"{workflow.stem}_result_{index}.png")
    made = np.asarray(thumbnail(results), np.float32)
    with Image.open(workflow.with_suffix(".jpg")) as shipped_file:
        shipped = np.asarray(shipped_file.convert("RGB"), np.float32)
    assert shipped.shape == made.shape, "the thumbnail is not of this workflow's results: python tools/build_thumbnails.py"
    assert np.abs(shipped - made).mean() < THUMBNAIL_TOLERANCE, \
        f"{workflow.with_suffix('.jpg').name} is not a picture of what the workflow makes: rebuild it with " \
        f"python tools/build_thumbnails.py {artifacts_dir}"

