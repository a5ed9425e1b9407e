"""Running the editor over a benchmark: resumable, and shardable across processes.

Results go to ``OUT/results/<case id>.png``, each written whole or not at all (a temporary
file renamed into place), so a run that is stopped leaves only finished results behind and
the next run edits what is missing. Every result carries the settings it was made with in a
PNG text chunk; a run refuses to mix results made with other settings into one report.

Shards take every n-th case (``cases[index::count]``), so each gets a share of both tracks.
Cases of one shard that share a reference image are edited one after another with the
reference encoded once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..command_options import DTYPES
from ..edit_options import RegionOptions, SamplingOptions
from ..image_files import read_image
from ..errors import InputError
from ..model_files import ModelFiles
from ..preprocess import image_to_uint8
from .benchmark import Case

logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"
SETTINGS_CHUNK = "mimicbrush-evaluate"


@dataclass(frozen=True)
class EditSettings:
    """What decides a result besides the case: model files (by name; the checkpoint also by
    size), precision, and the sampling and region options. The device is left out: it changes
    results only by rounding."""

    checkpoint: str
    vae: str
    depth_model: str
    config_dir: str | None
    dtype: str
    sampling: SamplingOptions
    regions: RegionOptions

    @classmethod
    def describe(cls, files: ModelFiles, config_dir: str | None, dtype: torch.dtype, sampling: SamplingOptions,
                 regions: RegionOptions) -> EditSettings:
        checkpoint = f"{files.checkpoint.name} ({files.checkpoint.stat().st_size} bytes)"
        dtype_name = next(name for name, value in DTYPES.items() if value == dtype)
        return cls(checkpoint, files.vae.name, files.depth_model.name,
                   Path(config_dir).name if config_dir else None, dtype_name, sampling, regions)

    def record(self) -> dict:
        """Every setting under its own name, as results record them."""
        files = {name: getattr(self, name) for name in ("checkpoint", "vae", "depth_model", "config_dir", "dtype")}
        return {**files, **asdict(self.sampling), **asdict(self.regions)}

    def to_json(self) -> str:
        return json.dumps(self.record(), sort_keys=True)


class OutputFolder:
    """``OUT``: ``run.json`` (which benchmark it belongs to), ``results/``, ``sheets/``, the reports."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.record_path = self.path / RUN_RECORD
        self.results = self.path / "results"
        self.sheets = self.path / "sheets"
        self.report_json = self.path / "report.json"
        self.report_md = self.path / "report.md"
        self.record: dict | None = None

    def claim(self, benchmark_folder: Path, results_from: Path | None) -> None:
        """Check that the folder is new, empty, or an earlier run's of this benchmark, and create it.

        A folder holding anything but an earlier run's files is refused, so that a typo in
        ``--out`` never writes over a user's own files. ``run.json`` is written later, by
        :meth:`record_run`.
        """
        self.record = {"benchmark": str(benchmark_folder.resolve()),
                       "results_from": str(results_from.resolve()) if results_from else None}
        if self.record_path.is_file():
            self._check_record()
            return
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise InputError(f"'{self.path}' exists and is not an evaluation folder; choose a new or empty --out.")
        self.path.mkdir(parents=True, exist_ok=True)

    def record_run(self) -> None:
        """Write ``run.json`` if the folder has none; called before each file a run writes.

        Not written when the folder is claimed: a run that stops before its first result (model
        files that do not load, a forgotten --models or --results) would leave a record of its
        benchmark and results folder in an otherwise empty folder, and a later run of another
        benchmark or of --results would be refused it. A record that another process wrote since
        the claim is checked as the claim checks it.
        """
        if not self.record_path.is_file():
            # written whole under another name and renamed into place, so that a shard that finds the
            # record never reads it half-written; read back below, as another run's may have won
            written = self.record_path.with_name(f".{RUN_RECORD}.{os.getpid()}")
            written.write_text(json.dumps(self.record, indent=2) + "\n", encoding="utf-8")
            os.replace(written, self.record_path)
        self._check_record()

    def _check_record(self) -> None:
        """Refuse the folder unless its ``run.json`` names this run's benchmark and results folder."""
        try:
            found = json.loads(self.record_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InputError(f"{self.record_path} is damaged ({err.msg}); use a new --out folder.") from err
        if found != self.record:
            raise InputError(f"'{self.path}' holds an evaluation of {found.get('benchmark')} "
                             f"(results from {found.get('results_from') or 'the editor'}); this run is of "
                             f"{self.record['benchmark']} (results from {self.record['results_from'] or 'the editor'}). "
                             "Use another --out folder.")

    def result_path(self, case: Case) -> Path:
        return self.results / f"{case.id}.png"


def select_shard(cases: list[Case], index: int, count: int) -> list[Case]:
    return cases[index::count]


def recorded_settings(path: Path) -> str | None:
    """The settings JSON a result was made with (None for a PNG written by something else)."""
    with Image.open(path) as image:
        return getattr(image, "text", {}).get(SETTINGS_CHUNK)


def write_result(image: np.ndarray, path: Path, settings: EditSettings) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    info = PngInfo()
    info.add_text(SETTINGS_CHUNK, settings.to_json())
    Image.fromarray(image).save(partial, format="PNG", pnginfo=info)
    os.replace(partial, path)


def _settings_difference(recorded: str | None, settings: EditSettings) -> str:
    if recorded is None:
        return "it was not written by this command"
    try:
        before = json.loads(recorded)
    except json.JSONDecodeError:
        return "its settings record is damaged"
    return ", ".join(f"{key} {before.get(key)!r} instead of {value!r}"
                     for key, value in settings.record().items() if before.get(key) != value)


def cases_to_edit(cases: list[Case], folder: OutputFolder, settings: EditSettings, overwrite: bool) -> list[Case]:
    """The cases without a result; a result made with other settings is an error unless ``overwrite``."""
    todo = []
    for case in cases:
        path = folder.result_path(case)
        if overwrite or not path.exists():
            todo.append(case)
            continue
        recorded = recorded_settings(path)
        if recorded != settings.to_json():
            raise InputError(f"The result {path} was made with other settings ({_settings_difference(recorded, settings)})."
                             " Run with the same settings to resume, pass --overwrite to redo every case, or "
                             "use another --out.")
    return todo


def check_one_settings(paths: list[Path]) -> dict:
    """The settings every result was made with; results of mixed settings cannot make one report."""
    found: dict[str | None, list[str]] = {}
    for path in paths:
        found.setdefault(recorded_settings(path), []).append(path.stem)
    if len(found) > 1:
        groups = "; ".join(f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}" for ids in found.values())
        raise InputError(f"The results were made with {len(found)} different settings (cases grouped: {groups}). "
                         "Redo the odd ones with --overwrite and the settings you want, or use another --out.")
    recorded = next(iter(found))
    return json.loads(recorded) if recorded else {}


def edit_cases(cases: list[Case], folder: OutputFolder, settings: EditSettings, pipeline) -> None:
    """Edit ``cases`` with a :class:`MimicBrushPipeline`, writing each result as soon as it is done."""
    ordered = sorted(cases, key=lambda case: str(case.reference.resolve()))
    encoded, encoded_path = None, None
    for number, case in enumerate(ordered, 1):
        started = time.perf_counter()
        if case.reference != encoded_path:
            encoded, encoded_path = pipeline.encode_reference(read_image(str(case.reference), "RGB")), case.reference
        result = pipeline.edit(
            read_image(str(case.source), "RGB"), read_image(str(case.source_mask), "L")[..., 0], encoded,
            keep_shape=case.keep_shape, sampling=settings.sampling, regions=settings.regions)
        folder.record_run()
        write_result(image_to_uint8(result.images[0]), folder.result_path(case), settings)
        logger.info("edited %s (%d/%d) in %.1f s", case.id, number, len(ordered), time.perf_counter() - started)
