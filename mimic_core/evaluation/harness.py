"""What ``evaluate`` does, in order: check the benchmark, edit what has no result, score, report.

One process, ``--shard I/N`` processes started by hand, or ``accelerate launch`` processes
(each edits its share; the main process waits for the others and scores) all use the same
output folder. A run with nothing left to edit loads no editor; the report is written by a
run without ``--shard`` once every case has a result.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
from pathlib import Path

import torch

from ..command_options import check_device, region_options, resolve_device_dtype, sampling_options
from ..errors import InputError, ModelFileError
from ..model_files import find_model_files
from ..edit_options import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ..preprocess import WORKING_SIZE
from .backbones import load_backbones
from .benchmark import Benchmark, Case, load_benchmark
from .contact_sheet import contact_sheet, write_contact_sheet
from .report import build_report, write_report
from .runner import (
    EditSettings,
    OutputFolder,
    cases_to_edit,
    check_one_settings,
    edit_cases,
    select_shard,
)
from .scoring import not_computed_reasons, score_cases

logger = logging.getLogger(__name__)

RESULT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise InputError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4 ... 3/4), got '{text}'.")
    return int(match[1]), int(match[2])


def find_results(folder: Path, cases: list[Case]) -> dict[str, Path]:
    """``<case id>.<png|jpg|jpeg|webp>`` for every case in a folder of results made elsewhere."""
    if not folder.is_dir():
        raise InputError(f"The results folder '{folder}' does not exist.")
    found, missing = {}, []
    for case in cases:
        candidates = [folder / f"{case.id}{suffix}" for suffix in RESULT_SUFFIXES if (folder / f"{case.id}{suffix}").is_file()]
        if len(candidates) > 1:
            raise InputError(f"'{folder}' holds {len(candidates)} results for case '{case.id}' "
                             f"({', '.join(path.name for path in candidates)}); keep one.")
        if candidates:
            found[case.id] = candidates[0]
        else:
            missing.append(case.id)
    if missing:
        raise InputError(f"'{folder}' has no result for {len(missing)} case(s): {', '.join(missing[:10])}"
                         f"{' ...' if len(missing) > 10 else ''}. Name each result <case id>.png.")
    return found


def _device(requested: str, state) -> torch.device:
    if requested != "auto":
        return check_device(requested)
    if state is not None:
        return state.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_metric_paths(args: argparse.Namespace) -> None:
    """Fail before hours of editing, not after, when a backbone path is wrong."""
    for option, value in (("--dino", args.dino), ("--clip", args.clip), ("--lpips-backbone", args.lpips_backbone)):
        if value is not None and not Path(value).exists():
            raise ModelFileError(f"{option} '{value}' does not exist; give the local path of the backbone, or leave "
                                 "the option out to report its metrics as not computed.")
    if args.batch_size < 1 or args.sheet_height < 16:
        raise InputError("--batch-size must be at least 1 and --sheet-height at least 16.")


def _edit_shard(args: argparse.Namespace, benchmark: Benchmark, folder: OutputFolder, shard: list[Case],
                device: torch.device) -> None:
    if not (args.models or args.checkpoint):
        if args.shard or args.overwrite:
            raise InputError("--shard and --overwrite edit cases: give the editor's model files (--models DIR, or "
                             "--checkpoint, --vae and --depth-model).")
        return
    files = find_model_files(args.models, checkpoint=args.checkpoint, vae=args.vae, depth_model=args.depth_model)
    dtype = resolve_device_dtype(device.type, args.dtype)[1]
    sampling = sampling_options(args, DEFAULT_STEPS, DEFAULT_GUIDANCE, WORKING_SIZE)
    settings = EditSettings.describe(files, args.config_dir, dtype, sampling, region_options(args))
    todo = cases_to_edit(shard, folder, settings, args.overwrite)
    logger.info("%d of this run's %d cases to edit (%d in the benchmark)", len(todo), len(shard), len(benchmark.cases))
    if not todo:
        return
    from ..models import load_models
    from ..pipeline import MimicBrushPipeline

    logger.info("Loading models (%s, %s on %s)", files.checkpoint, dtype, device)
    models = load_models(files.checkpoint, files.vae, files.depth_model, config_dir=args.config_dir,
                         dtype=dtype, device=device)
    edit_cases(todo, folder, settings, MimicBrushPipeline(models, working_size=sampling.working_size))


def _score(args: argparse.Namespace, benchmark: Benchmark, folder: OutputFolder, results: dict[str, Path],
           editor: dict, device: torch.device) -> None:
    backbones = load_backbones(*(Path(value) if value else None for value in (args.dino, args.clip, args.lpips_backbone)),
                               args.lpips_net, device)
    sheets = {}

    def draw(case, images, edited):
        folder.record_run()
        sheets[case.id] = folder.sheets / f"{case.id}.png"
        write_contact_sheet(contact_sheet(case, images, edited, args.sheet_height), sheets[case.id])

    scores = score_cases(benchmark.cases, lambda case: results[case.id], backbones, args.batch_size, draw)
    report = build_report(benchmark, scores, not_computed_reasons(backbones), editor, backbones.sources,
                          folder.path, sheets)
    write_report(report, folder.report_json, folder.report_md)


def evaluate(args: argparse.Namespace) -> int:
    sampling_options(args, DEFAULT_STEPS, DEFAULT_GUIDANCE, WORKING_SIZE)  # a bad option costs a second, not a load
    if args.device != "auto":
        check_device(args.device)
    benchmark = load_benchmark(args.benchmark)
    _check_metric_paths(args)
    folder = OutputFolder(args.out)
    results_from = Path(args.results) if args.results else None
    if results_from is not None and (args.shard or args.overwrite):
        raise InputError("--results scores existing images; --shard and --overwrite are for editing.")
    if args.shard and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("Use --shard or accelerate launch to split the cases, not both.")
    results = find_results(results_from, benchmark.cases) if results_from is not None else None
    state = None
    if args.shard:
        index, count = parse_shard(args.shard)
    else:
        from accelerate import PartialState

        # CPU processes (torchrun, mpirun) join a gloo group only when the state is told it is on the CPU
        on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
        state = PartialState(cpu=on_cpu)
        index, count = state.process_index, state.num_processes
    device = _device(args.device, state)
    first = state.main_process_first() if state is not None else contextlib.nullcontext()
    with first:
        folder.claim(benchmark.folder, results_from)

    if results_from is None:
        _edit_shard(args, benchmark, folder, select_shard(benchmark.cases, index, count), device)
        if state is not None:
            state.wait_for_everyone()
    if args.shard:
        done = sum(folder.result_path(case).exists() for case in benchmark.cases)
        logger.info("Shard %d/%d done; %d of %d cases have a result. When all do, run again without --shard to "
                    "score and write the report.", index, count, done, len(benchmark.cases))
        print(folder.results)
        return 0
    if state is not None and not state.is_main_process:
        return 0

    if results is not None:
        editor = {"mode": "results", "folder": str(results_from.resolve())}
    else:
        missing = [case.id for case in benchmark.cases if not folder.result_path(case).exists()]
        if missing:
            raise InputError(f"{len(missing)} case(s) have no result yet ({', '.join(missing[:10])}"
                             f"{' ...' if len(missing) > 10 else ''}): give the model files (--models DIR, or "
                             "--checkpoint, --vae and --depth-model) to edit them, or finish the other shards.")
        results = {case.id: folder.result_path(case) for case in benchmark.cases}
        editor = {"mode": "editor", "settings": check_one_settings(list(results.values()))}
    _score(args, benchmark, folder, results, editor, device)
    for path in (folder.report_json, folder.report_md, folder.sheets):
        print(path)
    return 0
