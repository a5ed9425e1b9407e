"""The evaluation's outputs: a JSON report (every number) and a Markdown table (the paper's layout).

Each track's row averages SSIM, PSNR and LPIPS over its inner-ID cases and DINO-I, CLIP-I and
CLIP-T over its inter-ID cases (CLIP-T over those with a text), as the paper's table does. A
metric that was not computed shows as "n/c" with the reason below the table, never as a number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .benchmark import TRACKS, Benchmark
from .scoring import LOWER_IS_BETTER, METRICS, CaseScore

PAPER_RESULTS = {
    "part_composition": {"SSIM": 0.70, "PSNR": 17.54, "LPIPS": 0.28, "DINO-I": 56.48, "CLIP-I": 84.30, "CLIP-T": 30.08},
    "texture_transfer": {"SSIM": 0.75, "PSNR": 17.73, "LPIPS": 0.26, "DINO-I": 49.83, "CLIP-I": 79.44},
}
"""MimicBrush's numbers in the paper (arXiv 2406.07547), on the authors' unreleased benchmark."""
PAPER_NOTE = ("The paper's rows are its MimicBrush numbers on the authors' own (unreleased) cases; "
              "numbers compare only with the same backbones.")
PAPER_CASES = {"part_composition": (30, 120), "texture_transfer": (30, 30)}
"""(inner-ID, inter-ID) cases per track in the paper's benchmark."""

DECIMALS = {"SSIM": 3, "LPIPS": 3, "PSNR": 2, "DINO-I": 2, "CLIP-I": 2, "CLIP-T": 2}
TRACK_TITLES = {"part_composition": "part composition", "texture_transfer": "texture transfer"}


def summarize(scores: list[CaseScore]) -> dict:
    """Per track and metric: the mean over the cases that have the metric, and their count.

    The mean is ``None`` when the metric applies to the track's cases but was not computed.
    """
    summary = {}
    for track in TRACKS:
        track_scores = [score for score in scores if score.case.track == track]
        if not track_scores:
            continue
        summary[track] = {}
        for metric in METRICS:
            applicable = [score.metrics[metric] for score in track_scores if metric in score.metrics]
            if not applicable:
                continue
            values = [value for value in applicable if value is not None]
            summary[track][metric] = {"mean": sum(values) / len(values) if values else None, "cases": len(applicable)}
    return summary


def build_report(benchmark: Benchmark, scores: list[CaseScore], not_computed: dict[str, str], editor: dict,
                 backbones: dict[str, str], out: Path, sheets: dict[str, Path]) -> dict:
    summary = summarize(scores)
    used = {metric for track in summary.values() for metric in track}
    return {
        "benchmark": {"folder": str(benchmark.folder.resolve()), "name": benchmark.name, "cases": len(benchmark.cases)},
        "editor": editor,
        "backbones": backbones,
        "not_computed": {metric: reason for metric, reason in not_computed.items() if metric in used},
        "summary": summary,
        "paper": PAPER_RESULTS,
        "cases": [{
            "id": score.case.id, "track": score.case.track, "pairing": score.case.pairing,
            "category": score.case.category, "result": os.path.relpath(score.result, out),
            "contact_sheet": os.path.relpath(sheets[score.case.id], out), "metrics": score.metrics,
        } for score in scores],
    }


def _cell(metric: str, value: float | None, counted: bool) -> str:
    if not counted:
        return "–"
    if value is None:
        return "n/c"
    return f"{value:.{DECIMALS[metric]}f}"


def _header() -> list[str]:
    arrows = [f"{metric} {'↓' if metric in LOWER_IS_BETTER else '↑'}" for metric in METRICS]
    return ["| track | cases (inner-ID / inter-ID) | " + " | ".join(arrows) + " |",
            "|---|---|" + "---:|" * len(METRICS)]


def markdown_table(report: dict) -> str:
    """The report as Markdown: the summary beside the paper's numbers, then every case."""
    lines = [f"# MimicBrush evaluation: {report['benchmark']['name']}", "", *_header()]
    cases = report["cases"]
    for track, metrics in report["summary"].items():
        inner = sum(1 for case in cases if case["track"] == track and case["pairing"] == "inner_id")
        inter = len([case for case in cases if case["track"] == track]) - inner
        cells = [_cell(metric, metrics[metric]["mean"], True) if metric in metrics else "–" for metric in METRICS]
        lines.append(f"| {TRACK_TITLES[track]} | {inner} / {inter} | " + " | ".join(cells) + " |")
        paper = PAPER_RESULTS[track]
        paper_cells = [_cell(metric, paper.get(metric), metric in paper) for metric in METRICS]
        paper_inner, paper_inter = PAPER_CASES[track]
        lines.append(f"| {TRACK_TITLES[track]} (paper) | {paper_inner} / {paper_inter} | "
                     + " | ".join(paper_cells) + " |")
    lines += ["", PAPER_NOTE]
    if report["not_computed"]:
        lines += ["", "Not computed (n/c):"]
        lines += [f"- {metric}: {reason}" for metric, reason in report["not_computed"].items()]
    lines += ["", "## Cases", "", "| case | track | pairing | " + " | ".join(METRICS) + " | contact sheet |",
              "|---|---|---|" + "---:|" * len(METRICS) + "---|"]
    for case in cases:
        cells = [_cell(metric, case["metrics"].get(metric), metric in case["metrics"]) for metric in METRICS]
        lines.append(f"| {case['id']} | {TRACK_TITLES[case['track']]} | {case['pairing'].replace('_id', '-ID')} | "
                     + " | ".join(cells) + f" | [sheet]({case['contact_sheet']}) |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, json_path: Path, markdown_path: Path) -> None:
    """Both files, each replaced whole (they are derived from the results and rewritten by every run)."""
    for path, text in ((json_path, json.dumps(report, indent=2, allow_nan=False) + "\n"),
                       (markdown_path, markdown_table(report))):
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)

