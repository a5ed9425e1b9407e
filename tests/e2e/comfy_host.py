"""A real ComfyUI server with this pack and the tiny fixture models, for the end-to-end tests.

The hosts are the ones ``../shared/comfyui-host/install.sh`` installs (ComfyUI of March 2024, and
ComfyUI 0.3.75 with its new frontend); ``MIMICBRUSH_COMFY_HOST`` names their folders. The fixture
models are placed in a host's model folders: the checkpoint converted to a self-describing
``.safetensors`` (the tiny architecture is not the released one), the VAE folder and the depth
model linked in place under the names the shipped workflows use.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support import FIXTURE, REPO

HOST_SCRIPTS = Path(os.environ.get("MIMICBRUSH_COMFY_HOST_SCRIPTS", REPO.parent / "shared" / "comfyui-host"))

PACK_NAME = "ComfyUI-MimicBrush-Imitation"
"""The pack's folder under ``custom_nodes``, as a clone of its repository names it. ComfyUI-Manager
matches installed packs by folder name, and "ComfyUI-MimicBrush" is another author's pack there."""
_LOGGED_PATH = re.compile(r"""['"]?/[^\s'"]+['"]?""")
"""A file path as the start-up log quotes it (or not)."""
CHECKPOINT = "mimicbrush_tiny.safetensors"
VAE = "sd-vae-ft-mse/diffusion_pytorch_model.safetensors"
DEPTH = "depth_anything_vitb14.pth"
DEPTH_LOADERS = ("MimicBrushDepthAnythingLoader", "DepthAnythingLoader")
"""The depth loader's node id, and its first one, kept (deprecated) for workflows saved with it."""
NODE_TYPES = ["MimicBrushExampleImage", "MimicBrushLoader", *DEPTH_LOADERS, "MimicBrushDepth",
              "MimicBrushEncodeReference", "MimicBrushJoinReferences", "MimicBrushSampler", "MimicBrushCropAroundMask",
              "MimicBrushStitch"]
TEST_STEPS = 2
"""Sampling steps of the shipped workflows when run on the tiny fixture models."""
DEMO_CHOICE = "built-in demo (tiny, synthetic)"


def _is_demo(loader_values) -> bool:
    return DEMO_CHOICE in loader_values


def for_tiny_host(prompt: dict, steps: int = TEST_STEPS) -> dict:
    """A shipped API workflow pointed at the fixture models, with few steps. The demo workflow runs
    as shipped: its built-in model is part of the pack."""
    prompt = copy.deepcopy(prompt)
    if any(_is_demo(node["inputs"].values()) for node in prompt.values() if node["class_type"] == "MimicBrushLoader"):
        return prompt
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "MimicBrushLoader":
            inputs.update(checkpoint=CHECKPOINT, vae=VAE)
        elif node["class_type"] in DEPTH_LOADERS:
            inputs["model"] = DEPTH
        elif node["class_type"] == "MimicBrushSampler":
            inputs["steps"] = steps
    return prompt


def ui_for_tiny_host(workflow: dict, steps: int = TEST_STEPS) -> dict:
    """The same change on a UI-format workflow (its widget values, in the page's order)."""
    workflow = copy.deepcopy(workflow)
    if any(_is_demo(node["widgets_values"]) for node in workflow["nodes"] if node["type"] == "MimicBrushLoader"):
        return workflow
    for node in workflow["nodes"]:
        values = node["widgets_values"]
        if node["type"] == "MimicBrushLoader":
            values[0], values[1] = CHECKPOINT, VAE
        elif node["type"] in DEPTH_LOADERS:
            values[0] = DEPTH
        elif node["type"] == "MimicBrushSampler":
            values[0] = steps
    return workflow


def _link(target: Path, source: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(source)


def place_fixture_models(comfy: Path) -> None:
    models = comfy / "models"
    (models / "mimicbrush").mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "mimic_core", "convert", str(FIXTURE / "mimicbrush_tiny.bin"),
                    str(models / "mimicbrush" / CHECKPOINT), "--config-dir", str(FIXTURE), "--overwrite"],
                   cwd=REPO, check=True, capture_output=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        _link(models / "vae" / "sd-vae-ft-mse" / name, FIXTURE / "vae" / name)
    _link(models / "depth_anything" / DEPTH, FIXTURE / "depth_anything_tiny.pth")
    # the tiny depth model's head count is not in its weights: the sidecar config gives it
    _link(models / "depth_anything" / "depth_anything_vitb14_config.json", FIXTURE / "depth_anything_tiny_config.json")


def host_client_class():
    """The host's own HTTP client (``client.py`` beside ``install.sh``; standard library only)."""
    spec = importlib.util.spec_from_file_location("comfy_host_client", HOST_SCRIPTS / "client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ComfyClient


def host_version(root: Path) -> str:
    """"0.3.75" (or whichever ``comfyui_version.py`` says), or "2024" for the tree that has none."""
    version_file = root / "ComfyUI" / "comfyui_version.py"
    if not version_file.is_file():
        return "2024"
    return re.search(r'__version__ = "([^"]+)"', version_file.read_text()).group(1)


class ComfyHost:
    """Starts the server with ``serve.sh`` and stops it; knows its folders, version and process."""

    def __init__(self, root: Path, port: int):
        self.root = root
        self.comfy = root / "ComfyUI"
        self.version = host_version(root)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.client = host_client_class()(self.url)
        self.pid: int | None = None

    @property
    def has_template_browser(self) -> bool:
        return self.version != "2024"

    def start(self) -> None:
        done = subprocess.run(["bash", str(HOST_SCRIPTS / "serve.sh"), str(self.root), str(REPO), str(self.port),
                               PACK_NAME], capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"ComfyUI did not start:\n{done.stderr}\n{self.log()[-4000:]}")
        self.pid = int(done.stdout.strip().splitlines()[-1])
        self.client.wait_ready()

    def stop(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            self.pid = None

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def pack_import_lines(self) -> list[str]:
        """The start-up log's lines about this pack (the host's own optional modules are not ours): those
        naming its folder under custom_nodes, and those whose words (paths aside: a clone named after
        the pack puts its name in every path of a host made inside it) name MimicBrush."""
        return [line for line in self.log().splitlines()
                if f"custom_nodes/{PACK_NAME}" in line or "MimicBrush" in _LOGGED_PATH.sub("", line)]

    def pack_import_seconds(self) -> float:
        """The pack's import time from ComfyUI's "Import times for custom nodes" list."""
        for line in self.pack_import_lines():
            found = re.match(r"\s*([0-9.]+) seconds(?: \(IMPORT FAILED\))?: .*custom_nodes/" + re.escape(PACK_NAME) + "$",
                             line)
            if found:
                return float(found.group(1))
        raise AssertionError("the start-up log lists no import time for the pack:\n" + self.log()[-3000:])

    def empty_input_folder(self) -> None:
        """A fresh install's ``input/``: nothing in it (uploads of earlier runs removed)."""
        for path in (self.comfy / "input").iterdir():
            if path.is_file() or path.is_symlink():
                path.unlink()

    def resident_memory_kib(self) -> int:
        """The server's resident memory (VmRSS) in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def output_file(self, entry: dict, node_id: str) -> Path:
        for node, name, subfolder, kind in self.client.output_images(entry):
            if node == node_id:
                return self.comfy / kind / subfolder / name
        raise AssertionError(f"node {node_id} produced no image: {entry.get('outputs')}")


def run_prompt(host: ComfyHost, prompt: dict, limit_s: int = 600) -> dict:
    return host.client.wait(host.client.queue(prompt), limit_s=limit_s)


def error_message(entry: dict) -> str:
    for event, data in entry["status"]["messages"]:
        if event == "execution_error":
            return f"{data['exception_type']}: {data['exception_message']}"
    return ""
