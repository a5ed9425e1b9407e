"""End to end: ``python -m mimic_core evaluate`` on a synthetic benchmark with the tiny models.

The editor is the tiny random-weight fixture (2 steps at 64 px), the backbones tiny random CLIP
and DINOv2 folders built here; LPIPS is left without a backbone (torchvision is not importable
in this environment), so it must be reported as not computed.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mimic_core.cli import main
from mimic_core.errors import InputError
from mimic_core.evaluation.benchmark import load_benchmark
from mimic_core.evaluation.contact_sheet import GAP, STRIP, panel_width, sheet_size
from mimic_core.evaluation.runner import OutputFolder
from tests.evaluation_support import (
    SYNTHETIC_CASES,
    write_synthetic_benchmark,
    write_tiny_clip,
    write_tiny_dino,
)
from tests.support import require_fixture

INNER = {"SSIM", "PSNR", "LPIPS"}
SHEET_HEIGHT = 48


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    return {"root": root, "benchmark": write_synthetic_benchmark(root / "benchmark"),
            "clip": write_tiny_clip(root / "clip"), "dino": write_tiny_dino(root / "dino")}


def editor_options():
    fixture = require_fixture()
    return ["--checkpoint", str(fixture / "mimicbrush_tiny.bin"), "--vae", str(fixture / "vae"),
            "--depth-model", str(fixture / "depth_anything_tiny.pth"), "--config-dir", str(fixture),
            "--steps", "2", "--working-size", "64", "--device", "cpu"]


def evaluate(workspace, out, *extra, editor=True, backbones=True):
    argv = ["evaluate", "--benchmark", str(workspace["benchmark"]), "--out", str(out),
            "--sheet-height", str(SHEET_HEIGHT), *extra]
    if editor:
        argv += editor_options()
    if backbones:
        argv += ["--clip", str(workspace["clip"]), "--dino", str(workspace["dino"])]
    return main(argv)


@pytest.fixture(scope="module")
def full_run(workspace):
    out = workspace["root"] / "full"
    assert evaluate(workspace, out) == 0
    return out


def read_report(out):
    return json.loads((out / "report.json").read_text())


def metrics_by_case(report):
    return {case["id"]: case["metrics"] for case in report["cases"]}


def test_report_scores_every_case_with_its_pairing_metrics(full_run):
    report = read_report(full_run)
    assert [case["id"] for case in report["cases"]] == list(SYNTHETIC_CASES)
    metrics = metrics_by_case(report)
    for case_id in ("pc-inner", "tt-inner"):
        assert set(metrics[case_id]) == INNER
        assert -1 <= metrics[case_id]["SSIM"] < 1 and 0 < metrics[case_id]["PSNR"] < 100
        assert metrics[case_id]["LPIPS"] is None
    for case_id in ("pc-inter", "tt-inter"):
        assert set(metrics[case_id]) == {"DINO-I", "CLIP-I", "CLIP-T"}
        assert -100 <= metrics[case_id]["DINO-I"] <= 100 and -100 <= metrics[case_id]["CLIP-I"] <= 100
        assert 0 <= metrics[case_id]["CLIP-T"] <= 100
    assert "LPIPS" in report["not_computed"] and set(report["not_computed"]) == {"LPIPS"}
    assert report["editor"]["mode"] == "editor" and report["editor"]["settings"]["steps"] == 2
    summary = report["summary"]["part_composition"]
    assert summary["SSIM"] == {"mean": metrics["pc-inner"]["SSIM"], "cases": 1}
    assert summary["DINO-I"] == {"mean": metrics["pc-inter"]["DINO-I"], "cases": 1}
    assert summary["LPIPS"] == {"mean": None, "cases": 1}


def test_markdown_table_has_a_row_per_track_beside_the_paper(full_run):
    table = (full_run / "report.md").read_text()
    assert "| SSIM ↑ | PSNR ↑ | LPIPS ↓ | DINO-I ↑ | CLIP-I ↑ | CLIP-T ↑ |" in table
    report = read_report(full_run)
    pc = report["summary"]["part_composition"]
    assert f"| part composition | 1 / 1 | {pc['SSIM']['mean']:.3f} | {pc['PSNR']['mean']:.2f} | n/c |" in table
    assert "| part composition (paper) | 30 / 120 | 0.700 | 17.54 | 0.280 | 56.48 | 84.30 | 30.08 |" in table
    assert "| texture transfer (paper) | 30 / 30 | 0.750 | 17.73 | 0.260 | 49.83 | 79.44 | – |" in table
    assert "- LPIPS:" in table
    for case_id in SYNTHETIC_CASES:
        assert f"| {case_id} |" in table and f"(sheets/{case_id}.png)" in table


def test_one_contact_sheet_per_case_with_source_mask_reference_result(full_run):
    benchmark = load_benchmark(full_run.parent / "benchmark")
    for case in benchmark.cases:
        sheet = np.asarray(Image.open(full_run / "sheets" / f"{case.id}.png").convert("RGB"))
        source = np.asarray(Image.open(case.source).convert("RGB"))
        reference = np.asarray(Image.open(case.reference).convert("RGB"))
        result = np.asarray(Image.open(full_run / "results" / f"{case.id}.png").convert("RGB"))
        assert result.shape == source.shape
        width, height = sheet_size([source, source, reference, result], SHEET_HEIGHT)
        assert sheet.shape == (height, width, 3)
        panel = panel_width(source.shape[1], source.shape[0], SHEET_HEIGHT)
        left = GAP + panel + GAP  # the mask panel follows the source panel
        mask_panel = sheet[STRIP:STRIP + SHEET_HEIGHT, left:left + panel]
        rows, cols = np.nonzero(np.asarray(Image.open(case.source_mask).convert("L")) > 127)
        scale = SHEET_HEIGHT / source.shape[0]
        centre = (int((rows.min() + rows.max()) / 2 * scale), int((cols.min() + cols.max()) / 2 * scale))
        assert (mask_panel[centre] == 255).all() and (mask_panel[1, 1] == 0).all()


def test_resume_edits_only_the_missing_case(workspace, full_run):
    results = {path.name: path.stat().st_mtime_ns for path in (full_run / "results").iterdir()}
    removed = full_run / "results" / "tt-inter.png"
    kept = removed.read_bytes()
    removed.unlink()
    assert evaluate(workspace, full_run) == 0
    assert removed.read_bytes() == kept  # same settings and seed: the same result again
    for name, modified in results.items():
        if name != removed.name:
            assert (full_run / "results" / name).stat().st_mtime_ns == modified


def test_other_settings_are_refused_in_the_same_folder(workspace, full_run, capsys):
    assert evaluate(workspace, full_run, "--seed", "7") == 2
    assert "seed 0 instead of 7" in capsys.readouterr().err


def test_shards_edit_disjoint_cases_and_the_merge_writes_the_full_report(workspace, full_run):
    out = workspace["root"] / "sharded"
    edited = []
    for shard in ("0/2", "1/2"):
        before = {path.name for path in (out / "results").glob("*.png")} if out.exists() else set()
        assert evaluate(workspace, out, "--shard", shard, backbones=False) == 0
        edited.append({path.name for path in (out / "results").glob("*.png")} - before)
        assert not (out / "report.json").exists()
    assert edited[0].isdisjoint(edited[1]) and edited[0] and edited[1]
    assert edited[0] | edited[1] == {f"{case_id}.png" for case_id in SYNTHETIC_CASES}
    assert evaluate(workspace, out, editor=False) == 0  # nothing left to edit: no model needed
    merged, whole = read_report(out), read_report(full_run)
    assert merged["summary"] == whole["summary"]
    assert metrics_by_case(merged) == metrics_by_case(whole)


def test_scoring_results_made_elsewhere_without_a_clip_backbone(workspace, full_run):
    elsewhere = workspace["root"] / "other_method"
    shutil.copytree(full_run / "results", elsewhere)
    Image.open(elsewhere / "pc-inter.png").convert("RGB").save(elsewhere / "pc-inter.jpg", quality=95)
    (elsewhere / "pc-inter.png").unlink()
    out = workspace["root"] / "scored"
    argv = ["evaluate", "--benchmark", str(workspace["benchmark"]), "--out", str(out), "--results", str(elsewhere),
            "--dino", str(workspace["dino"]), "--sheet-height", str(SHEET_HEIGHT)]
    assert main(argv) == 0
    report = read_report(out)
    assert report["editor"] == {"mode": "results", "folder": str(elsewhere.resolve())}
    assert set(report["not_computed"]) == {"LPIPS", "CLIP-I", "CLIP-T"}
    assert "--clip" in report["not_computed"]["CLIP-I"]
    metrics, whole = metrics_by_case(report), metrics_by_case(read_report(full_run))
    assert metrics["pc-inter"]["CLIP-I"] is None and metrics["tt-inter"]["CLIP-T"] is None
    assert metrics["tt-inter"]["DINO-I"] == pytest.approx(whole["tt-inter"]["DINO-I"])
    assert metrics["pc-inner"] == whole["pc-inner"]
    assert "n/c" in (out / "report.md").read_text()
    assert len(list((out / "sheets").glob("*.png"))) == len(SYNTHETIC_CASES)


def test_missing_results_name_the_cases(workspace, tmp_path, capsys):
    (tmp_path / "results").mkdir()
    argv = ["evaluate", "--benchmark", str(workspace["benchmark"]), "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "results")]
    assert main(argv) == 2
    assert "no result for 4 case(s): pc-inter, pc-inner" in capsys.readouterr().err


def test_a_folder_with_other_files_is_not_written_to(workspace, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert evaluate(workspace, tmp_path, editor=False, backbones=False) == 2
    assert "not an evaluation folder" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def write_manifest(folder, cases):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"cases": cases}))
    return folder


def test_bad_manifests_are_explained(workspace, tmp_path):
    images = workspace["benchmark"] / "images"
    good = {"id": "a", "track": "part_composition", "pairing": "inter_id", "source": str(images / "pc-inter_source.png"),
            "source_mask": str(images / "pc-inter_mask.png"), "reference": str(images / "mug_reference.png")}
    with pytest.raises(InputError, match="has no manifest.json"):
        load_benchmark(tmp_path)
    (tmp_path / "manifest.json").write_text("{\"cases\": [")
    with pytest.raises(InputError, match="not valid JSON"):
        load_benchmark(tmp_path)
    problems = [
        ({**good, "track": "texture"}, "track 'texture' is not one of"),
        ({**good, "sorce": "x.png"}, "unknown key(s) sorce"),
        ({key: value for key, value in good.items() if key != "reference"}, 'lacks "reference"'),
        ({**good, "id": "a/b"}, "the id may hold only"),
        ({**good, "source": "missing.png"}, "source 'missing.png' does not exist"),
        ({**good, "source_mask": str(images / "shoe_reference_mask.png")}, "source_mask is 64x80 but the source is 128x96"),
        ({**good, "reference_mask": str(images / "pc-inter_mask.png")}, "reference_mask is 128x96 but the reference is 96x64"),
    ]
    for case, message in problems:
        with pytest.raises(InputError) as error:
            load_benchmark(write_manifest(tmp_path / "bad", [case]))
        assert message in str(error.value)
    empty = tmp_path / "empty_mask.png"
    Image.fromarray(np.zeros((96, 128), np.uint8)).save(empty)
    small = tmp_path / "small_mask.png"
    Image.fromarray(np.pad(np.full((20, 60), 255, np.uint8), ((10, 66), (10, 58)))).save(small)
    with pytest.raises(InputError) as error:
        load_benchmark(write_manifest(tmp_path / "bad", [
            {**good, "source_mask": str(empty)}, {**good, "id": "b", "pairing": "inner_id", "source_mask": str(small)},
            {**good, "id": "b"}]))
    message = str(error.value)
    assert "3 problem(s)" in message and "source_mask is empty" in message
    assert "60x20 px; inner-ID cases need at least 32" in message and "'b' is used by 2 cases (#2, #3)" in message


def test_bad_options_are_refused_before_any_work(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert evaluate(workspace, out, "--shard", "2/2", backbones=False) == 2
    assert "--shard must be I/N with 0 <= I < N" in capsys.readouterr().err
    assert evaluate(workspace, out, "--dino", str(tmp_path / "no_dino"), editor=False, backbones=False) == 2
    assert f"--dino '{tmp_path / 'no_dino'}' does not exist" in capsys.readouterr().err
    assert evaluate(workspace, out, "--shard", "0/2", editor=False, backbones=False) == 2
    assert "give the editor's model files" in capsys.readouterr().err
    assert not (out / "results").exists() and not (out / "run.json").exists()


def copy_sources_as_results(benchmark_folder, results):
    """A folder of "results made elsewhere": each case's source, unedited (at the source's size, as required)."""
    results.mkdir()
    for case in load_benchmark(benchmark_folder).cases:
        shutil.copyfile(case.source, results / f"{case.id}.png")
    return results


def test_a_run_that_fails_before_any_result_leaves_no_record(workspace, tmp_path, capsys):
    """A run.json left by a run that wrote nothing named that run's benchmark and results folder, so the
    next run in the folder, scoring --results (or another benchmark), was refused the folder."""
    out = tmp_path / "out"
    assert evaluate(workspace, out, editor=False, backbones=False) == 2  # neither --models nor --results
    assert "have no result yet" in capsys.readouterr().err
    assert evaluate(workspace, out, "--models", str(tmp_path / "no_models"), editor=False, backbones=False) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (out / "run.json").exists()
    results = copy_sources_as_results(workspace["benchmark"], tmp_path / "elsewhere")
    assert evaluate(workspace, out, "--results", str(results), editor=False, backbones=False) == 0
    assert json.loads((out / "run.json").read_text())["results_from"] == str(results.resolve())
    assert (out / "report.json").is_file()


def folder_contents(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_failed_run_leaves_an_earlier_runs_folder_as_it_was(workspace, full_run, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(full_run, partial)
    (partial / "results" / "tt-inter.png").unlink()
    before = folder_contents(partial)
    assert evaluate(workspace, partial, editor=False, backbones=False) == 2  # a case without a result, no --models
    assert "1 case(s) have no result yet" in capsys.readouterr().err
    assert evaluate(workspace, partial, "--models", str(tmp_path / "no_models"), editor=False, backbones=False) == 2
    assert folder_contents(partial) == before and "run.json" in before


def test_the_record_is_written_with_the_first_file_and_checked_then(workspace, tmp_path):
    """Two runs that claimed the same empty folder: the second to write is refused, not mixed in."""
    first, second = OutputFolder(tmp_path / "out"), OutputFolder(tmp_path / "out")
    first.claim(workspace["benchmark"], None)
    second.claim(tmp_path / "other_benchmark", None)
    assert not first.record_path.exists()
    first.record_run()
    assert json.loads(first.record_path.read_text())["benchmark"] == str(workspace["benchmark"].resolve())
    with pytest.raises(InputError, match="holds an evaluation of"):
        second.record_run()


def test_the_command_module_that_cli_imports_pulls_in_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, mimic_core.evaluation.command; print(sorted(m for m in sys.modules if m in "
            "('torch', 'torchmetrics', 'accelerate', 'transformers') or m.startswith('mimic_core.evaluation.') "
            "and m != 'mimic_core.evaluation.command'))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


AUTHORS_FOLDERS = {("part_composition", "inter_id"): "PartComp/CrossInstance",
                   ("part_composition", "inner_id"): "PartComp/WithinInstance",
                   ("texture_transfer", "inter_id"): "TextureTrans/CrossInstance",
                   ("texture_transfer", "inner_id"): "TextureTrans/WithinInstance"}


def test_the_authors_benchmark_layout_is_read_and_scored_with_one_command(workspace, tmp_path):
    """The synthetic benchmark rewritten in the layout of the authors' run_inference_benchmark.py
    (no manifest): the same cases, tracks and pairings, texture cases with shape control, and a run."""
    ours = load_benchmark(workspace["benchmark"])
    authors = tmp_path / "MimicBrush_bench"
    for case in ours.cases:
        folder = authors / AUTHORS_FOLDERS[(case.track, case.pairing)]
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, path in (("source", case.source), ("source_mask", case.source_mask), ("reference", case.reference)):
            shutil.copyfile(path, folder / f"{case.id}_{suffix}.png")
    theirs = load_benchmark(authors)
    assert sorted((c.track, c.pairing, c.id.split("-", 2)[2]) for c in theirs.cases) == \
        sorted((c.track, c.pairing, c.id) for c in ours.cases)
    assert all(case.keep_shape == (case.track == "texture_transfer") for case in theirs.cases)
    out = tmp_path / "scored"
    assert main(["evaluate", "--benchmark", str(authors), "--out", str(out), "--sheet-height", str(SHEET_HEIGHT),
                 *editor_options(), "--clip", str(workspace["clip"]), "--dino", str(workspace["dino"])]) == 0
    assert {case["id"] for case in read_report(out)["cases"]} == {case.id for case in theirs.cases}

    next(authors.glob("*/*/*_source_mask.png")).unlink()
    with pytest.raises(InputError, match="problem"):
        load_benchmark(authors)
