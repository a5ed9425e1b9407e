"""Every command-line and engine case of the bad-input catalogue (``tests/bad_inputs.py``), on the
built-in demo model (no download, no fixture): each is refused with one message naming the
problem and the fix before any model loads (command line) or any network runs (engine), or gives
the correct result. The node cases run on each ComfyUI host in ``tests/e2e``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimic_core.cli import main
from mimic_core.demo import DEMO_WORKING_SIZE, EXAMPLES_DIR, demo_model_files
from mimic_core.errors import InputError
from mimic_core.image_files import read_image, read_mask
from mimic_core.models import load_models
from mimic_core.output_images import write_images
from mimic_core.pipeline import EncodedReference, MimicBrushPipeline
from tests.bad_inputs import CASES, CLI, ENGINE, BadInput
from tests.support import REPO

STEPS = 2


@pytest.fixture(autouse=True)
def one_thread():
    """The demo model is tiny: one thread is as fast as two and keeps its pace beside other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cases_of(surface: str) -> list:
    return [pytest.param(case, id=case.id) for case in CASES if case.surface == surface]


# --- the command line -------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """The files the command-line cases name in braces."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "existing.png").write_bytes((EXAMPLES_DIR / "source.png").read_bytes())
    (folder / "notes.txt").write_text("not a picture")
    with Image.open(EXAMPLES_DIR / "mask.png") as mask:
        width, height = mask.size
    Image.new("L", (width, height)).save(folder / "empty_mask.png")
    Image.new("L", (width * 2, height), 255).save(folder / "wide_mask.png")
    with Image.open(EXAMPLES_DIR / "mask.png") as mask:
        mask.convert("L").point(lambda value: 100 if value > 128 else 0).save(folder / "faint_mask.png")
    return {"folder": str(folder), "source": str(EXAMPLES_DIR / "source.png"), "existing": str(folder / "existing.png"),
            "text_file": str(folder / "notes.txt"), "empty_mask": str(folder / "empty_mask.png"),
            "wide_mask": str(folder / "wide_mask.png"), "faint_mask": str(folder / "faint_mask.png")}


def edit_arguments(files: dict[str, str], change: dict) -> list[str]:
    options = {"--source": files["source"], "--mask": str(EXAMPLES_DIR / "mask.png"),
               "--reference": str(EXAMPLES_DIR / "reference.png"), "--out": files["folder"] + "/edited.png",
               "--steps": str(STEPS)}
    for option, value in change.items():
        if value is None:
            del options[option]
        else:
            options[option] = value.format(**files)
    return ["edit", *(part for option, value in options.items() for part in (option, value))]


def run_command(arguments: list[str], capsys, caplog) -> tuple[int, list[str]]:
    """Exit status and the lines written to stderr; argparse's own refusals exit through SystemExit."""
    caplog.set_level(logging.INFO, logger="mimic_core")
    try:
        status = main(arguments)
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err.strip().splitlines()


def test_a_good_command_loads_the_models_and_writes_its_picture(files, capsys, caplog):
    """The control for the cases below: the same arguments unchanged do reach the model load."""
    status, _ = run_command(edit_arguments(files, {}), capsys, caplog)
    assert status == 0 and "Loading models" in caplog.text
    with Image.open(files["folder"] + "/edited.png") as edited, Image.open(files["source"]) as source:
        assert edited.size == source.size


def test_a_mask_at_another_resolution_is_resized_with_one_warning(files, capsys, caplog):
    with Image.open(EXAMPLES_DIR / "mask.png") as mask:
        mask.resize((mask.width * 2, mask.height * 2), Image.Resampling.NEAREST).save(files["folder"] + "/big.png")
    status, _ = run_command(edit_arguments(files, {"--mask": "{folder}/big.png"}), capsys, caplog)
    assert status == 0
    assert caplog.text.count("resizing it (nearest)") == 1, caplog.text


@pytest.mark.parametrize("case", cases_of(CLI))
def test_a_bad_command_is_refused_in_one_line_before_any_model_loads(case: BadInput, files, capsys, caplog):
    if case.change.get("--device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU, so --device cuda is not a mistake here")
    before = sorted(Path(files["folder"]).iterdir())
    status, lines = run_command(edit_arguments(files, case.change), capsys, caplog)
    assert status == 2
    assert case.answer in lines[-1], lines
    assert sum("error:" in line for line in lines) == 1, lines
    assert "Loading models" not in caplog.text
    assert sorted(Path(files["folder"]).iterdir()) == before, "a refused command wrote or removed a file"


@pytest.mark.parametrize("option, value, answer", [
    ("--guidance", "inf", "--guidance must be a finite number of 0 or more"),
    ("--device", "cuda:x", "--device 'cuda:x' is not a device"),
])
def test_evaluate_checks_the_same_options_before_it_reads_the_benchmark(tmp_path, capsys, caplog, option, value,
                                                                        answer):
    status, lines = run_command(["evaluate", "--benchmark", str(tmp_path / "missing"), "--out", str(tmp_path / "out"),
                                 option, value], capsys, caplog)
    assert status == 2 and answer in lines[-1], lines
    assert not (tmp_path / "out").exists()


# --- the engine ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    """The demo pipeline, its example inputs as ComfyUI gives them, and a record of every network call."""
    files = demo_model_files()
    pipeline = MimicBrushPipeline(load_models(files.checkpoint, files.vae, files.depth_model),
                                  working_size=DEMO_WORKING_SIZE)
    calls = []
    for network in (pipeline.models.vae, pipeline.models.unet, pipeline.models.image_encoder):
        network.register_forward_pre_hook(lambda module, args: calls.append(type(module).__name__))
    inputs = {"source": read_image(EXAMPLES_DIR / "source.png", "RGB"), "mask": read_mask(EXAMPLES_DIR / "mask.png"),
              "reference": read_image(EXAMPLES_DIR / "reference.png", "RGB")}
    return pipeline, inputs, calls


def prepared(name: str, inputs: dict) -> torch.Tensor:
    """The engine cases' inputs, named as the catalogue names them."""
    source, mask, reference = inputs["source"], inputs["mask"], inputs["reference"]
    with_nan = source.clone()
    with_nan[0, :4, :4] = torch.nan
    with_inf = reference.clone()
    with_inf[0, -3:, -3:] = torch.inf
    return {
        "uint8 source": (source * 255).round().to(torch.uint8),
        "0..255 float source": source * 255,
        "NaN source": with_nan,
        "inf reference": with_inf,
        "two sources": torch.cat([source, source]),
        "numpy source": source.numpy(),
        "PIL source": Image.fromarray((source[0].numpy() * 255).astype("uint8")),
        "path reference": str(EXAMPLES_DIR / "reference.png"),
        "no mask": None,
        "channels-first source": source.permute(0, 3, 1, 2).contiguous(),
        "uint8 mask": (mask * 255).round().to(torch.uint8),
        "[H, W, 1] mask": mask[0, ..., None],
        "double-size mask": mask.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2),
        "0..255 float mask": (mask > 0.5).float() * 255,
        "two masks": torch.cat([mask, mask]),
        "empty mask": torch.zeros_like(mask),
        "faint mask": (mask > 0.5).float() * 0.5,
        "label mask": (mask > 0.5).to(torch.uint8),
        "NaN depth map": torch.full((1, 1, 8, 8), torch.nan),
        # image embeddings of 5 tokens of 7 features: neither the demo's architecture nor the released one
        "another architecture's encoded reference": EncodedReference(
            [np.full((16, 16, 3), 255, np.uint8)], torch.zeros(1, 5, 7), torch.zeros(1, 5, 7)),
    }[name]


def edit(demo, change: dict):
    pipeline, inputs, _ = demo
    arguments = {**inputs, "steps": STEPS, "seed": 5}
    arguments.update({key: prepared(value, inputs) if isinstance(value, str) and key in PREPARED_KEYS else value
                      for key, value in change.items()})
    source, mask, reference = arguments.pop("source"), arguments.pop("mask"), arguments.pop("reference")
    return pipeline.edit(source, mask, reference, **arguments)


PREPARED_KEYS = {"source", "mask", "reference", "depth_map"}


@pytest.mark.parametrize("case", cases_of(ENGINE))
def test_the_engine_refuses_a_bad_input_before_any_network_runs_or_edits_it_correctly(case: BadInput, demo):
    _, _, calls = demo
    calls.clear()
    if case.answer:
        with pytest.raises(InputError) as refusal:
            edit(demo, case.change)
        assert case.answer in str(refusal.value) and "\n" not in str(refusal.value)
        assert calls == [], f"{calls[:3]} ran before the refusal"
    else:
        expected = edit(demo, {}).images
        assert calls, "the control edit ran no network: the check above would prove nothing"
        assert torch.equal(edit(demo, case.change).images, expected)


def test_an_encoded_reference_with_another_architectures_latents_is_refused_before_any_network_runs(demo):
    pipeline, inputs, calls = demo
    blank = pipeline.blank_embedding()  # this model's image embeddings: only the latents differ
    calls.clear()
    latent = pipeline.models.latent_size(DEMO_WORKING_SIZE)
    reference = EncodedReference([np.full((16, 16, 3), 255, np.uint8)], blank, blank)
    reference.posteriors[DEMO_WORKING_SIZE] = (torch.zeros(1, 8, latent, latent), torch.ones(1, 8, latent, latent))
    with pytest.raises(InputError, match="VAE latents of 8 channels, where this model's have 4") as refusal:
        pipeline.edit(inputs["source"], inputs["mask"], reference, steps=STEPS, seed=5)
    assert "another architecture" in str(refusal.value) and calls == []


# --- a finished edit is never lost -------------------------------------------------------------------

def test_an_edit_that_cannot_be_written_is_kept_in_the_temporary_folder_and_the_message_says_where(tmp_path):
    picture = np.full((8, 8, 3), 200, np.uint8)
    blocked = tmp_path / "edited.png"
    blocked.mkdir()  # the path became a folder while the edit ran
    fine = tmp_path / "other.png"
    with pytest.raises(InputError, match="the result is saved as") as refusal:
        write_images([picture, picture], [blocked, fine], "PNG")
    kept = Path(str(refusal.value).split("the result is saved as '")[1].split("'")[0])
    try:
        assert np.array_equal(np.asarray(Image.open(kept)), picture)
        assert np.array_equal(np.asarray(Image.open(fine)), picture)
        assert sorted(path.name for path in tmp_path.iterdir()) == ["edited.png", "other.png"]
    finally:
        kept.unlink()


def test_the_readme_table_is_the_catalogue():
    from tools.build_bad_input_table import render_table

    assert render_table() in (REPO / "README.md").read_text()
