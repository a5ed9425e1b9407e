"""A real ComfyUI server with this pack and the tiny fixture models, for the end-to-end tests.

The host is the one ``../shared/comfyui-host/install.sh`` installs (ComfyUI of March 2024);
``MIMICBRUSH_COMFY_HOST`` names its folder. The fixture models are placed in its model folders
under the names the shipped workflows use: the checkpoint converted to a self-describing
``.safetensors`` (the tiny architecture is not the released one), the VAE folder and the depth
model linked in place.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support import FIXTURE, REPO

HOST_SCRIPTS = Path(os.environ.get("MIMICBRUSH_COMFY_HOST_SCRIPTS", REPO.parent / "shared" / "comfyui-host"))
sys.path.insert(0, str(HOST_SCRIPTS))
from client import ComfyClient  # noqa: E402  (the host's own client, standard library only)

PACK_NAME = "ComfyUI-MimicBrush"
CHECKPOINT = "mimicbrush_tiny.safetensors"
VAE = "sd-vae-ft-mse/diffusion_pytorch_model.safetensors"
DEPTH = "depth_anything_vitb14.pth"
NODE_TYPES = ["MimicBrushLoader", "DepthAnythingLoader", "MimicBrushDepth", "MimicBrushEncodeReference",
              "MimicBrushSampler", "MimicBrushCropAroundMask", "MimicBrushStitch"]


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


class ComfyHost:
    """Starts the server with ``serve.sh`` and stops it; knows its folders and its process."""

    def __init__(self, root: Path, port: int):
        self.root = root
        self.comfy = root / "ComfyUI"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.client = ComfyClient(self.url)
        self.pid: int | None = None

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
