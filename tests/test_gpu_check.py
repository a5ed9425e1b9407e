"""The GPU check (``bench/gpu_check.py``) kept runnable where no GPU is: its parity and speed parts run
on the CPU at the fixture's size, as ``bash bench/gpu_check.sh --cpu-smoke`` runs them, so that the
script a person runs on a CUDA machine has run against this commit's engine. Its ComfyUI part runs
against each end-to-end host (``tests/e2e/test_comfyui_host.py``)."""

from __future__ import annotations

import torch

from bench.gpu_check import check_parity, check_speed


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell} |")]


def test_the_parity_part_finds_the_fixture_s_edit_within_its_tolerance(fixture_dir, capsys):
    """In float32 only: reduced precisions' deviation on the fixture is tested in ``tests/test_pipeline.py``,
    and each costs the suite another two edits."""
    assert check_parity(torch.device("cpu"), (), fixture_dir) == 0
    output = capsys.readouterr().out
    exact = _table_rows(output, "fp32")
    assert [row[1] for row in exact] == ["on", "off"], output
    assert all(row[-1] == "within the fixture's tolerance" for row in exact), output


def test_the_speed_part_times_exact_fast_and_the_authors_order_side_by_side(fixture_dir, capsys):
    assert check_speed(torch.device("cpu"), "tiny", 1, ("fp32",)) == 0
    rows = _table_rows(capsys.readouterr().out, "fp32")
    assert len(rows) == 1
    authors, exact, ratio, fast = (float(rows[0][i]) for i in range(1, 5))
    assert min(authors, exact, fast) > 0 and abs(ratio - exact / authors) < 0.01
