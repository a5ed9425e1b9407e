"""The GPU path checked in one run: golden parity, the ComfyUI workflow, the speed table.

    bash bench/gpu_check.sh [--cpu-smoke]          # the wrapper: all three parts, in order
    python bench/gpu_check.py parity [--device cuda] [--precisions fp16,bf16]
    python bench/gpu_check.py speed [--device cuda] [--size full|tiny] [--steps 50] [--precisions fp16,bf16]
    python bench/gpu_check.py comfyui --comfyui DIR [--python PY] [--device cuda]

``parity``: the golden fixture's whole edit from its PNGs on the device, in fp32 (within the
fixture's end-to-end tolerance: latents 1e-3, uint8 within 1) and in fp16 and bf16, or
``--precisions`` (their deviation printed: not exact). The noise is drawn on the CPU, as the fixture's was.

``speed``: SD-1.5-size components with random weights (``bench/speed.py``'s), a 512² edit in fp16
and bf16 (or ``--precisions``): exact (50 DDIM steps), the fast preset, and the authors' computation order beside them,
with each one's peak device memory. One warm-up edit first, so no timing holds CUDA's start-up.

``comfyui``: a ComfyUI checkout started with this pack linked into its ``custom_nodes`` (the
device it finds: no ``--cpu`` unless ``--device cpu``), the shipped demo workflow queued (the
built-in demo model, no download): it must succeed, with one progress event per step; then a
400-step run interrupted after 3 steps must end within one more step; then the demo again, which
must succeed (the models kept in ComfyUI's model management). Needs ``aiohttp`` (ComfyUI's own).

Every part prints one Markdown table and exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mimic_core.command_options import DTYPES  # noqa: E402
from mimic_core.edit_options import QUALITY_PRESETS, describe_quality  # noqa: E402
from mimic_core.models import load_models  # noqa: E402
from mimic_core.pipeline import MimicBrushPipeline  # noqa: E402

FIXTURE = Path(os.environ.get("MIMICBRUSH_FIXTURE_DIR", REPO.parent / "shared" / "fixtures" / "mimicbrush_tiny"))
PACK_NAME = "ComfyUI-MimicBrush-Imitation"
HALF_PRECISIONS = ("fp16", "bf16")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fixture_inputs(fixture: Path):
    from PIL import Image

    def image(name, mode="RGB"):
        return np.asarray(Image.open(fixture / "inputs" / name).convert(mode))

    source = torch.from_numpy(image("source.png").astype(np.float32) / 255)[None]
    reference = torch.from_numpy(image("reference.png").astype(np.float32) / 255)[None]
    mask = torch.from_numpy((image("mask.png", "L") > 128).astype(np.float32))
    return source, mask, reference


def check_parity(device: torch.device, half_precisions: tuple[str, ...] = HALF_PRECISIONS,
                 fixture: Path = FIXTURE) -> int:
    """The fixture's end-to-end edit on ``device`` in float32, against the golden outputs, and its
    deviation in each of ``half_precisions``."""
    from safetensors.torch import load_file

    if not (fixture / "mimicbrush_tiny.bin").is_file():
        print(f"parity: skipped, no golden fixture at {fixture} (set MIMICBRUSH_FIXTURE_DIR)")
        return 0
    golden = {case: load_file(str(fixture / f"golden_shape_{case}.safetensors")) for case in ("on", "off")}
    source, mask, reference = _fixture_inputs(fixture)
    print(f"\n| golden fixture on {device} | shape control | final latents max abs error | output uint8 max diff "
          "| values differing | verdict |")
    print("|---|---|---:|---:|---:|---|")
    failed = False
    for precision in ("fp32", *(p for p in half_precisions if p != "fp32")):
        models = load_models(fixture / "mimicbrush_tiny.bin", fixture / "vae", fixture / "depth_anything_tiny.pth",
                             config_dir=fixture, dtype=DTYPES[precision], device=device)
        pipeline = MimicBrushPipeline(models)
        for case, keep_shape in (("on", True), ("off", False)):
            result = pipeline.edit(source, mask, reference, keep_shape=keep_shape, steps=4, guidance=5.0, seed=1,
                                   generator_device="cpu")
            latents = (result.latents.double().cpu() - golden[case]["final_latents"].double()).abs().max().item()
            pixels = np.abs(np.asarray(result.square[0], np.int64) - golden[case]["output_512_uint8"].numpy())
            if precision == "fp32":
                ok = latents <= 1e-3 and pixels.max() <= 1 and (pixels > 0).mean() < 0.001
                failed |= not ok
                verdict = "within the fixture's tolerance" if ok else "**FAILS** (latents 1e-3, uint8 within 1)"
            else:
                verdict = "deviation (not exact)"
            print(f"| {precision} | {case} | {latents:.2e} | {pixels.max()} | {(pixels > 0).mean():.3%} | {verdict} |")
        del pipeline, models
    return 1 if failed else 0


def _timed_edit(pipeline, inputs, device, **options) -> tuple[float, float]:
    """Seconds and peak device memory (GiB; resident memory on the CPU) of one 512² edit."""
    source, mask, reference = inputs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _synchronize(device)
    started = time.perf_counter()
    pipeline.edit(source, mask, reference, keep_shape=True, seed=1, **options)
    _synchronize(device)
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        return seconds, torch.cuda.max_memory_allocated(device) / 2**30
    from bench.speed import peak_resident_gib

    return seconds, peak_resident_gib()


def check_speed(device: torch.device, size: str, steps: int, precisions: tuple[str, ...]) -> int:
    """The speed table: exact, the fast preset and the authors' order per precision."""
    from bench.authors_order import AuthorsOrderPipeline
    from bench.speed import _inputs, build_files

    fast = dict(QUALITY_PRESETS["fast"])
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        files = build_files(size, Path(work))
        print(f"built {size} random-weight files in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        source, mask, reference, _ = _inputs()
        inputs = (source, mask, reference)
        memory = "peak VRAM, GiB" if device.type == "cuda" else "peak resident, GiB"
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"\n{size} size, random weights, {device} ({name}), "
              f"512² edit with shape control; exact and the authors' order {steps} DDIM steps, fast: "
              f"{describe_quality('fast')}\n")
        print(f"| precision | authors' order, s per edit | exact, s per edit | exact / authors' | fast preset, s per edit "
              f"| exact / fast | {memory}: authors' / exact / fast |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for precision in precisions:
            models = load_models(files["safetensors"], files["vae"], files["depth"], dtype=DTYPES[precision],
                                 device=device)
            ours, theirs = MimicBrushPipeline(models), AuthorsOrderPipeline(models)
            ours.edit(*inputs, keep_shape=True, steps=2, seed=1)  # warm-up: kernels, allocator, packed weights
            theirs.edit(*inputs, keep_shape=True, steps=2, seed=1)
            authors = _timed_edit(theirs, inputs, device, steps=steps)
            exact = _timed_edit(ours, inputs, device, steps=steps)
            fast_edit = _timed_edit(ours, inputs, device, **fast)
            print(f"| {precision} | {authors[0]:.2f} | {exact[0]:.2f} | {exact[0] / authors[0]:.2f} | "
                  f"{fast_edit[0]:.2f} | {exact[0] / fast_edit[0]:.1f}x | "
                  f"{authors[1]:.2f} / {exact[1]:.2f} / {fast_edit[1]:.2f} |")
            del ours, theirs, models
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


class ComfyConnection:
    """A running ComfyUI server's HTTP and websocket API, as the check uses it."""

    def __init__(self, url: str):
        self.url = url
        self.client_id = uuid.uuid4().hex

    def get(self, route: str) -> dict:
        with urllib.request.urlopen(self.url + route, timeout=5) as response:
            return json.loads(response.read())

    def queue(self, prompt: dict) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        request = urllib.request.Request(self.url + "/prompt", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["prompt_id"]

    def interrupt(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + "/interrupt", b"", method="POST"), timeout=5).close()

    async def follow(self, prompt: dict, interrupt_after: int | None = None) -> list[str]:
        """Queue ``prompt`` and record what the websocket says of it: "progress value/max" per step,
        "interrupt sent" when POST /interrupt went out (after ``interrupt_after`` progress events),
        and how it ended ("executing done", "execution_interrupted", "execution_error", or
        "connection closed"). Events of another prompt are passed over: an interrupted prompt's
        closing "executing" can reach the next prompt's connection (same client id) after it opens."""
        import aiohttp

        events: list[str] = []
        ws_url = self.url.replace("http", "ws") + f"/ws?clientId={self.client_id}"
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            prompt_id = self.queue(prompt)
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue  # previews
                event = json.loads(message.data)
                if event.get("data", {}).get("prompt_id", prompt_id) != prompt_id:
                    continue
                if event["type"] == "progress":
                    events.append(f"progress {event['data']['value']}/{event['data']['max']}")
                    steps = sum(seen.startswith("progress") for seen in events)
                    if steps == interrupt_after and "interrupt sent" not in events:
                        self.interrupt()
                        events.append("interrupt sent")
                elif event["type"] in ("execution_error", "execution_interrupted"):
                    events.append(event["type"])
                    return events
                elif event["type"] == "executing" and event["data"].get("node") is None:
                    events.append("executing done")
                    return events
        events.append("connection closed")
        return events

    async def run(self, prompt: dict, interrupt_after: int | None = None) -> tuple[str, int, float]:
        """Queue ``prompt`` and follow it: how it ended ("success" or as :meth:`follow` says), the
        progress events seen, and its seconds."""
        started = time.perf_counter()
        events = await self.follow(prompt, interrupt_after)
        ended = "success" if events[-1] == "executing done" else events[-1]
        return ended, sum(event.startswith("progress") for event in events), time.perf_counter() - started


class ComfyServer(ComfyConnection):
    """A ComfyUI checkout started on loopback with this pack linked in; stopped on exit."""

    def __init__(self, comfy: Path, python: str, port: int, device: str):
        super().__init__(f"http://127.0.0.1:{port}")
        self.comfy, self.python, self.port, self.device = comfy, python, port, device
        self.process: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="comfyui-", suffix=".log")[1])
        self.link = comfy / "custom_nodes" / PACK_NAME
        self.made_link = False

    def __enter__(self) -> "ComfyServer":
        link = self.link
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
            self.made_link = True  # taken away again on exit: the user's ComfyUI is left as it was
        elif link.resolve() != REPO:
            raise SystemExit(f"{link} is another copy of the pack: move it aside to check this one")
        extra = ["--cpu"] if self.device == "cpu" else []
        if (self.comfy / "comfyui_version.py").is_file():
            extra.append("--disable-api-nodes")
        with self.log.open("w") as log:
            self.process = subprocess.Popen([self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
                                             "--disable-auto-launch", *extra], cwd=self.comfy, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(360):
            if self.process.poll() is not None:
                break
            try:
                self.get("/system_stats")
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise SystemExit(f"ComfyUI did not start (log {self.log}):\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        if self.made_link:
            self.link.unlink()


def _with_sampler(prompt: dict, **inputs) -> dict:
    """A copy of the API prompt with the sampler's ``inputs`` changed."""
    prompt = json.loads(json.dumps(prompt))
    next(node for node in prompt.values() if node["class_type"] == "MimicBrushSampler")["inputs"].update(inputs)
    return prompt


class WorkflowRun(NamedTuple):
    """One run of :func:`demo_workflow_runs`: how it ended against how it should have."""

    name: str
    ended: str
    progress_events: int
    seconds: float
    ok: bool


def demo_workflow_runs(server: ComfyConnection, seed: int | None = None, steps: int | None = None) -> list[WorkflowRun]:
    """The shipped demo workflow on a running ComfyUI with this pack: a run that must succeed with one
    progress event per step, a 400-step run interrupted after 3 steps that must end within one more,
    and a third that must succeed (the models kept by ComfyUI's model management). Each run another
    seed (from ``seed``, default the workflow's own), so that ComfyUI's cache does not answer for the
    sampler; ``steps`` replaces the workflow's steps in the two runs that end (the test suite's
    shorter check)."""
    prompt = json.loads((REPO / "workflows" / "api" / "mimicbrush_demo.json").read_text())
    sampler = next(node for node in prompt.values() if node["class_type"] == "MimicBrushSampler")["inputs"]
    seed = sampler["seed"] if seed is None else seed
    steps = sampler["steps"] if steps is None else steps
    runs = (("demo workflow", _with_sampler(prompt, seed=seed, steps=steps), None, "success", steps),
            ("400 steps, interrupted after 3", _with_sampler(prompt, steps=400, seed=seed + 1), 3,
             "execution_interrupted", 4),
            ("demo workflow again, the models kept", _with_sampler(prompt, seed=seed + 2, steps=steps), None,
             "success", steps))
    results = []
    for name, job, interrupt_after, expected_end, most_progress in runs:
        ended, progress, seconds = asyncio.run(server.run(job, interrupt_after))
        ok = ended == expected_end and (progress == most_progress if ended == "success" else progress <= most_progress)
        results.append(WorkflowRun(name, ended, progress, seconds, ok))
    return results


def check_comfyui(comfy: Path, python: str, device: str, port: int) -> int:
    """The demo workflow through a real ComfyUI on the device: run, interrupt, run again."""
    with ComfyServer(comfy, python, port, device) as server:
        devices = server.get("/system_stats").get("devices", [])
        runs = demo_workflow_runs(server)
        memory = [f"{d.get('name')}: {d.get('vram_free', 0) / 2**30:.1f} of {d.get('vram_total', 0) / 2**30:.1f} GiB free"
                  for d in server.get("/system_stats").get("devices", [])]
    print(f"\nComfyUI at {comfy} on {', '.join(d.get('name', '?') for d in devices) or device}\n")
    print("| run | ended | progress events | s | verdict |")
    print("|---|---|---:|---:|---|")
    for run in runs:
        print(f"| {run.name} | {run.ended} | {run.progress_events} | {run.seconds:.1f} | {'ok' if run.ok else '**FAILS**'} |")
    print(f"\nafter the runs: {'; '.join(memory)}")
    failed = not all(run.ok for run in runs)
    if failed:
        print(f"server log: {server.log}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["parity", "speed", "comfyui"])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, for the smoke test")
    parser.add_argument("--size", choices=["full", "tiny"], default="full", help="speed: the components' size")
    parser.add_argument("--steps", type=int, default=50, help="speed: DDIM steps of exact and the authors' order")
    parser.add_argument("--precisions", default=",".join(HALF_PRECISIONS),
                        help="comma-separated: speed's rows; parity checks fp32 and shows these beside it")
    parser.add_argument("--comfyui", type=Path, help="comfyui: the ComfyUI folder (holding main.py)")
    parser.add_argument("--python", default=sys.executable, help="comfyui: the interpreter ComfyUI runs on")
    parser.add_argument("--port", type=int, default=8288)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run on a CUDA machine, or pass --device cpu for the smoke test", file=sys.stderr)
        return 2
    precisions = tuple(args.precisions.split(","))
    if args.part == "parity":
        return check_parity(device, precisions)
    if args.part == "speed":
        return check_speed(device, args.size, args.steps, precisions)
    if args.comfyui is None or not (args.comfyui / "main.py").is_file():
        print("comfyui: give --comfyui DIR, the ComfyUI folder that holds main.py", file=sys.stderr)
        return 2
    return check_comfyui(args.comfyui.resolve(), args.python, args.device, args.port)


if __name__ == "__main__":
    sys.exit(main())
