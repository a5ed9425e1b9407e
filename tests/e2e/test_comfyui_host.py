"""The node pack inside a real ComfyUI server: loading, workflows, errors, cancel, repeat runs."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from PIL import Image

from bench.gpu_check import ComfyConnection, demo_workflow_runs
from tests.e2e.comfy_host import CHECKPOINT, NODE_TYPES, error_message, for_tiny_host, run_prompt
from tests.bad_inputs import CASES, NODE, BadInput
from tests.support import REPO

WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
def test_the_pack_imports_cleanly_and_every_node_is_documented(comfy_host):
    """The start-up log is read where it speaks of this pack: a host's own optional modules that do
    not import on this machine (0.3.75's audio nodes) are not the pack's concern."""
    lines = comfy_host.pack_import_lines()
    assert not [line for line in lines if "IMPORT FAILED" in line or "Cannot import" in line or "could not load" in line], \
        "\n".join(lines)
    print(f"ComfyUI {comfy_host.version}: the pack imported in {comfy_host.pack_import_seconds():.2f} s")
    info = comfy_host.client.object_info()
    for node_type in NODE_TYPES:
        node = info[node_type]
        assert node["category"] == "MimicBrush" and node["description"]
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_type}.{name} has no tooltip"


def test_a_workflow_saved_with_the_depth_loader_s_first_id_still_runs(comfy_host):
    """The depth loader's first node id, "DepthAnythingLoader", stays registered for saved workflows;
    where ComfyUI knows deprecation (0.3.75) it is marked so, and its library lists only the new id."""
    prompt = json.loads((REPO / "workflows" / "api" / "mimicbrush_demo.json").read_text())
    loader = next(node for node in prompt.values() if node["class_type"] == "MimicBrushDepthAnythingLoader")
    loader["class_type"] = "DepthAnythingLoader"
    next(node for node in prompt.values() if node["class_type"] == "MimicBrushSampler")["inputs"].update(steps=2, seed=110)
    entry = run_prompt(comfy_host, prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    if comfy_host.has_template_browser:
        info = comfy_host.client.object_info()
        assert info["DepthAnythingLoader"].get("deprecated") is True
        assert not info["MimicBrushDepthAnythingLoader"].get("deprecated")


def _source_and_mask(name: str):
    with Image.open(REPO / "workflows" / "inputs" / name) as image:
        rgba = np.asarray(image.convert("RGBA"))
    return rgba[..., :3], rgba[..., 3] < 128


def _source_file(prompt: dict, node_id: str) -> str:
    """The LoadImage file an edited image comes from (through a sampler, or a stitch of a crop)."""
    node = prompt[node_id]
    upstream = {"MimicBrushSampler": "source", "MimicBrushStitch": "crop", "MimicBrushCropAroundMask": "image"}
    if node["class_type"] == "MimicBrushExampleImage":
        return node["inputs"]["image"]
    return _source_file(prompt, node["inputs"][upstream[node["class_type"]]][0])


def _far_from(mask: np.ndarray, margin: int) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    far = np.ones_like(mask)
    far[max(ys.min() - margin, 0): ys.max() + margin + 1, max(xs.min() - margin, 0): xs.max() + margin + 1] = False
    return far


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_every_api_workflow_runs_and_leaves_the_rest_of_the_source_alone(comfy_host, workflow):
    prompt = for_tiny_host(json.loads(workflow.read_text()))
    entry = run_prompt(comfy_host, prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    for save_id, save in prompt.items():
        if save["class_type"] != "SaveImage":
            continue
        source, mask = _source_and_mask(_source_file(prompt, save["inputs"]["images"][0]))
        with Image.open(comfy_host.output_file(entry, save_id)) as output:
            result = np.asarray(output.convert("RGB"))
        assert result.shape == source.shape
        far = _far_from(mask, 12)
        assert np.array_equal(result[far], source[far])
        assert not np.array_equal(result[mask], source[mask])


def _upload(comfy_host, uploads, tmp_path, name: str, image: Image.Image) -> str:
    path = tmp_path / name
    image.save(path)
    uploads.append(comfy_host.client.upload_image(str(path)))
    return uploads[-1]


def _base_prompt() -> dict:
    return for_tiny_host(json.loads((REPO / "workflows" / "api" / "mimicbrush_part_composition.json").read_text()))


def _assert_next_prompt_succeeds(comfy_host, seed: int):
    prompt = _base_prompt()
    prompt["6"]["inputs"]["seed"] = seed
    entry = run_prompt(comfy_host, prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry)


def test_an_empty_mask_is_an_execution_error_that_says_what_to_do(comfy_host, uploads, tmp_path):
    source, _ = _source_and_mask("mimicbrush_source.png")
    opaque = Image.fromarray(np.dstack([source, np.full(source.shape[:2], 255, np.uint8)]), "RGBA")
    prompt = _base_prompt()
    prompt["3"] = {"class_type": "LoadImage",
                   "inputs": {"image": _upload(comfy_host, uploads, tmp_path, "no_mask.png", opaque)}}
    entry = run_prompt(comfy_host, prompt)
    assert entry["status"]["status_str"] == "error"
    assert "mask is empty" in error_message(entry) and "paint" in error_message(entry)
    _assert_next_prompt_succeeds(comfy_host, 101)


def test_a_mask_of_another_image_is_an_execution_error(comfy_host, uploads, tmp_path):
    prompt = _base_prompt()
    prompt["20"] = {"class_type": "LoadImageMask", "inputs": {
        "image": _upload(comfy_host, uploads, tmp_path, "square_mask.png", Image.new("L", (300, 300), 255)),
        "channel": "red"}}
    prompt["6"]["inputs"]["mask"] = ["20", 0]
    entry = run_prompt(comfy_host, prompt)
    assert entry["status"]["status_str"] == "error"
    assert "another aspect ratio" in error_message(entry) and "mask made from this image" in error_message(entry)
    _assert_next_prompt_succeeds(comfy_host, 102)


def test_a_missing_or_broken_model_file_is_an_execution_error_naming_the_fix(comfy_host):
    folder = comfy_host.comfy / "models" / "mimicbrush"
    gone, broken = folder / "mimicbrush_gone.safetensors", folder / "mimicbrush_broken.safetensors"
    gone.symlink_to(folder / "no_such_file.safetensors")  # listed by ComfyUI, but not there
    broken.write_bytes((folder / CHECKPOINT).read_bytes()[:5000])
    try:
        for name, expected in ((gone.name, "Download"), (broken.name, "truncated or corrupt")):
            prompt = _base_prompt()
            prompt["2"]["inputs"]["checkpoint"] = name
            entry = run_prompt(comfy_host, prompt)
            assert entry["status"]["status_str"] == "error"
            assert expected in error_message(entry), error_message(entry)
    finally:
        gone.unlink()
        broken.unlink()
    _assert_next_prompt_succeeds(comfy_host, 103)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.given) for case in CASES if case.surface == NODE])
def test_a_bad_node_input_is_refused_before_the_sampler_runs_with_the_fix(comfy_host, case: BadInput):
    """A widget value the frontend would not allow, sent in an API prompt: refused by ComfyUI's own
    validation (its range checks) or by the node before it loads the model to the device or samples."""
    prompt = _base_prompt()
    for target, value in case.change.items():
        class_type, name = target.split(".")
        node = next(node for node in prompt.values() if node["class_type"] == class_type)
        node["inputs"][name] = value
    try:
        entry = run_prompt(comfy_host, prompt)
    except ValueError as refused:  # ComfyUI's validation, before anything runs
        assert case.answer in str(refused), str(refused)
        return
    assert entry["status"]["status_str"] == "error"
    assert case.answer in error_message(entry) and "InputError" in error_message(entry), error_message(entry)


def test_the_encoder_takes_a_reference_mask_and_a_batch_as_one_reference(comfy_host):
    """The encoder's optional inputs on the real host: the source itself as the reference, its painted
    mask as the reference mask, the batch taken as one reference."""
    prompt = _base_prompt()
    encoder = next(node for node in prompt.values() if node["class_type"] == "MimicBrushEncodeReference")
    source = prompt["6"]["inputs"]["source"][0]
    encoder["inputs"].update(image=[source, 0], reference_mask=[source, 1], batch="all images as one reference")
    entry = run_prompt(comfy_host, prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry)


def test_more_references_than_sources_make_one_edit_each(comfy_host):
    """A batch of two references encoded one per image, on one source: the sampler cycles the source to
    the longest input, as it does masks, and every reference is used."""
    prompt = _base_prompt()
    prompt["30"] = {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["3", 0]}}
    prompt["5"]["inputs"]["image"] = ["30", 0]
    prompt["6"]["inputs"]["seed"] = 107
    entry = run_prompt(comfy_host, prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert len(entry["outputs"]["7"]["images"]) == 2


def test_cropping_each_region_counts_every_region_s_steps_from_the_start(comfy_host, uploads, tmp_path):
    """Two masked islands, each edited in a crop of its own: the progress bar's total is both regions'
    steps from its first update, so it never reaches its end before the last step."""
    source, _ = _source_and_mask("mimicbrush_source.png")
    height, width = source.shape[:2]
    islands = np.zeros((height, width), np.uint8)
    islands[8:40, 8:40] = 255
    islands[-40:-8, -40:-8] = 255
    prompt = _base_prompt()
    prompt["20"] = {"class_type": "LoadImageMask", "inputs": {
        "image": _upload(comfy_host, uploads, tmp_path, "two_islands.png", Image.fromarray(islands, "L")),
        "channel": "red"}}
    prompt["6"]["inputs"].update(mask=["20", 0], region="crop each region", seed=108)
    steps = prompt["6"]["inputs"]["steps"]
    events = asyncio.run(_follow(comfy_host, prompt))
    assert events[-1] == "executing done", events[-10:]
    progress = [event for event in events if event.startswith("progress")]
    assert progress == [f"progress {step}/{2 * steps}" for step in range(1, 2 * steps + 1)], progress


def test_stitching_an_image_that_is_not_square_is_an_execution_error(comfy_host):
    """The stitch node takes the edit of its crop, a square: another picture connected by mistake
    (here the full-size source) is refused instead of squeezed into the crop's box."""
    prompt = for_tiny_host(json.loads((REPO / "workflows" / "api" / "mimicbrush_large_image.json").read_text()))
    prompt["14"]["inputs"]["image"] = ["3", 0]
    del prompt["6"]
    entry = run_prompt(comfy_host, prompt)
    assert entry["status"]["status_str"] == "error"
    assert "not square" in error_message(entry) and "InputError" in error_message(entry), error_message(entry)
    _assert_next_prompt_succeeds(comfy_host, 109)


def test_a_quality_preset_runs_its_own_steps_in_place_of_the_widgets(comfy_host):
    """The sampler's quality choice on the real host: the progress bar counts the fast preset's
    steps, not the steps widget's."""
    from mimic_core.edit_options import QUALITY_PRESETS

    prompt = _base_prompt()
    prompt["6"]["inputs"].update(quality="fast", steps=2, seed=106)
    events = asyncio.run(_follow(comfy_host, prompt))
    assert events[-1] == "executing done", events[-10:]
    assert [event for event in events if event.startswith("progress")][-1] == \
        f"progress {QUALITY_PRESETS['fast']['steps']}/{QUALITY_PRESETS['fast']['steps']}", events


def _follow(comfy_host, prompt: dict, interrupt_after: int | None = None):
    """What the websocket says of ``prompt`` (``ComfyConnection.follow`` of the GPU check's client)."""
    return ComfyConnection(comfy_host.url).follow(prompt, interrupt_after)


def test_the_server_edits_after_every_bad_input(comfy_host):
    _assert_next_prompt_succeeds(comfy_host, 104)


def test_interrupt_ends_sampling_within_one_step(comfy_host):
    """Counts the progress events (one per step) that arrive after POST /interrupt: at most the step
    already running may finish."""
    prompt = _base_prompt()
    prompt["6"]["inputs"].update(steps=400, seed=104)
    warm = run_prompt(comfy_host, for_tiny_host(prompt, steps=1))  # loads everything: the long run only samples
    assert warm["status"]["status_str"] == "success"
    events = asyncio.run(_follow(comfy_host, prompt, interrupt_after=3))
    after = events[events.index("interrupt sent") + 1:]
    assert after[-1] == "execution_interrupted", events[-10:]
    assert sum(event.startswith("progress") for event in after) <= 1, events[-10:]
    _assert_next_prompt_succeeds(comfy_host, 105)


def test_the_gpu_check_s_comfyui_part_passes_here_on_the_cpu(comfy_host):
    """``bench/gpu_check.py comfyui`` (the demo workflow run, interrupted, run again) through its own
    client against this host: the GPU check's ComfyUI part, kept working where no GPU is. Seeds of
    its own, so that no earlier test's cached result answers for the sampler; 4 steps, not the
    demo's 25, for the suite's time."""
    runs = demo_workflow_runs(ComfyConnection(comfy_host.url), seed=7100, steps=4)
    assert all(run.ok for run in runs), runs


def test_repeated_edits_succeed_reproduce_and_do_not_grow_memory(comfy_host):
    from bench.soak import soak

    report = soak(comfy_host.client, comfy_host.resident_memory_kib, _base_prompt(), edits=10)
    print(report)
    assert report["failures"] == 0
    assert report["same_seed_same_bytes"]
    assert report["rss_growth"] < 0.05, report
