"""A broken benchmark is refused with one error that lists all its problems, before any model is loaded.

No model runs here: the benchmark is the synthetic one of ``tests/evaluation_support.py`` (images
only), and the command is given a models folder that does not exist, which it would refuse only
after the benchmark.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mimic_core.cli import main
from mimic_core.errors import InputError
from mimic_core.evaluation.benchmark import MAX_LISTED_PROBLEMS, load_benchmark
from tests.evaluation_support import rectangle_mask, smooth_image, write_synthetic_benchmark


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The synthetic benchmark's images, with an empty mask and a text file beside them."""
    folder = write_synthetic_benchmark(tmp_path_factory.mktemp("manifest") / "benchmark") / "images"
    Image.fromarray(np.zeros((96, 128), np.uint8)).save(folder / "empty_mask.png")
    (folder / "notes.txt").write_text("not a picture")
    return folder


def good_case(images, case_id):
    return {"id": case_id, "track": "part_composition", "pairing": "inter_id",
            "source": str(images / "pc-inter_source.png"), "source_mask": str(images / "pc-inter_mask.png"),
            "reference": str(images / "mug_reference.png")}


def write_manifest(folder, cases):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"cases": cases}))
    return folder


def test_every_problem_of_every_case_is_listed_in_one_error_before_the_models(images, tmp_path, capsys):
    """Each case has two problems, one of which used to hide the other until the first was fixed."""
    cases = [
        {**good_case(images, "r1"), "sorce": "x.png", "source": "missing.png"},
        {**good_case(images, "r2"), "track": "texture", "source_mask": str(images / "empty_mask.png")},
        {**good_case(images, "r3"), "source_mask": str(images / "notes.txt"),
         "reference_mask": str(images / "pc-inter_mask.png")},
        {**good_case(images, "r4"), "pairing": "inner"},
        {**good_case(images, "r4"), "reference": "gone.png"},
    ]
    benchmark = write_manifest(tmp_path / "broken", cases)
    out = tmp_path / "out"
    argv = ["evaluate", "--benchmark", str(benchmark), "--out", str(out), "--models", str(tmp_path / "no_models")]
    assert main(argv) == 2
    message = capsys.readouterr().err
    expected = [
        "case #1 ('r1') has unknown key(s) sorce",
        "case #1 ('r1'): source 'missing.png' does not exist",
        "case #2 ('r2'): track 'texture' is not one of",
        "case #2 ('r2'): source_mask is empty",
        "case #3 ('r3'): source_mask: Cannot read the image",
        "case #3 ('r3'): reference_mask is 128x96 but the reference is 96x64",
        "case #4 ('r4'): pairing 'inner' is not one of",
        "case #5 ('r4'): reference 'gone.png' does not exist",
        "case id 'r4' is used by 2 cases (#4, #5)",
    ]
    assert f"has {len(expected)} problem(s)" in message
    for problem in expected:
        assert problem in message
    assert "models folder" not in message and not out.exists()


def test_a_long_list_names_the_first_problems_and_counts_the_rest(images, tmp_path):
    count = MAX_LISTED_PROBLEMS + 30
    cases = [{**good_case(images, f"case{number}"), "source": f"missing{number}.png"} for number in range(count)]
    with pytest.raises(InputError) as error:
        load_benchmark(write_manifest(tmp_path / "broken", cases))
    message = str(error.value)
    assert f"has {count} problem(s)" in message
    assert [line.startswith("  - ") for line in message.splitlines()[1:]] == [True] * MAX_LISTED_PROBLEMS + [False]
    assert message.endswith("  ... and 30 more")
    assert f"missing{MAX_LISTED_PROBLEMS - 1}.png" in message and f"missing{MAX_LISTED_PROBLEMS}.png" not in message


def test_the_authors_layout_names_every_missing_file(images, tmp_path):
    authors = tmp_path / "MimicBrush_bench"
    cross, within = authors / "PartComp" / "CrossInstance", authors / "TextureTrans" / "WithinInstance"
    cross.mkdir(parents=True)
    within.mkdir(parents=True)
    shutil.copyfile(images / "mug_reference.png", cross / "lonely_reference.png")
    for suffix, picture in (("source", smooth_image(96, 128, 1)), ("reference", smooth_image(96, 128, 2)),
                            ("source_mask", rectangle_mask(96, 128, 10, 10, 30, 100))):
        Image.fromarray(picture).save(within / f"thin_{suffix}.png")
    with pytest.raises(InputError) as error:
        load_benchmark(authors)
    message = str(error.value)
    assert "has 3 problem(s)" in message
    for problem in (f"source: The image '{cross / 'lonely_source.png'}' does not exist",
                    f"source_mask: The image '{cross / 'lonely_source_mask.png'}' does not exist",
                    "the source mask's box is 90x20 px; inner-ID cases need at least 32"):
        assert problem in message
