"""The benchmark folder: a ``manifest.json`` listing cases, and the images it names.

A case is one edit the paper's protocol scores: a source image, the mask of the region to
regenerate, a reference image, optionally the reference's mask (which part of it should be
imitated) and a text description of the expected result. Each case belongs to a *track* (part
composition, or texture transfer with shape control on) and a *pairing*: ``inter_id`` (source
and reference show different things; scored against the reference) or ``inner_id`` (the
reference shows the same thing as the source, so the unedited source is the ground truth).

A folder in the layout of the authors' ``run_inference_benchmark.py`` is read as it is, with no
manifest: ``PartComp/`` and ``TextureTrans/``, each with ``CrossInstance/`` (inter-ID) and
``WithinInstance/`` (inner-ID), each holding ``<name>_source.png``, ``<name>_source_mask.png`` and
``<name>_reference.png``; texture cases are edited with shape control on, as the authors' script does.

Everything is checked when the benchmark is opened, before any model is loaded, and every
problem found is reported at once with the fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..image_files import image_size, read_image, read_mask as read_mask_file
from ..crop import mask_bounds
from ..errors import InputError
from ..preprocess import image_to_uint8

MANIFEST_NAME = "manifest.json"
TRACKS = ("part_composition", "texture_transfer")
PAIRINGS = ("inter_id", "inner_id")
KEEPS_SHAPE = {"part_composition": False, "texture_transfer": True}
"""The paper edits texture-transfer cases with shape control (depth) on, part composition without."""

AUTHORS_TRACKS = {"PartComp": "part_composition", "TextureTrans": "texture_transfer"}
AUTHORS_PAIRINGS = {"CrossInstance": "inter_id", "WithinInstance": "inner_id"}
"""The authors' benchmark folders (``<track>/<pairing>/``) and what this harness calls them."""
REQUIRED_KEYS = ("id", "track", "pairing", "source", "source_mask", "reference")
OPTIONAL_KEYS = ("reference_mask", "text", "category")
CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MIN_INNER_CROP = 32
"""Inner-ID crops are compared with SSIM (an 11-pixel window) and LPIPS (AlexNet needs about 32
pixels to reach its last layer), so their mask's box must be at least this many pixels a side."""


@dataclass(frozen=True)
class Case:
    id: str
    track: str
    pairing: str
    source: Path
    source_mask: Path
    reference: Path
    reference_mask: Path | None = None
    text: str | None = None
    category: str | None = None

    @property
    def keep_shape(self) -> bool:
        return KEEPS_SHAPE[self.track]


@dataclass
class CaseImages:
    """A case's pixels: images ``H x W x 3`` uint8, masks ``H x W`` bool (True = masked)."""

    source: np.ndarray
    source_mask: np.ndarray
    reference: np.ndarray
    reference_mask: np.ndarray | None


@dataclass
class Benchmark:
    folder: Path
    name: str
    cases: list[Case]


def read_rgb(path: Path) -> np.ndarray:
    """An image file as ``H x W x 3`` uint8 (the engine's reading, so both see the same pixels)."""
    return image_to_uint8(read_image(str(path), "RGB"), str(path))


def read_mask(path: Path) -> np.ndarray:
    """A mask file as ``H x W`` bool, binarised at half range like the engine does."""
    return read_mask_file(path)[0].numpy() > 0.5


def load_case_images(case: Case) -> CaseImages:
    return CaseImages(read_rgb(case.source), read_mask(case.source_mask), read_rgb(case.reference),
                      read_mask(case.reference_mask) if case.reference_mask is not None else None)


def load_benchmark(folder: str | Path) -> Benchmark:
    """Open and check a benchmark folder; raises :class:`InputError` listing every problem."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise InputError(f"The benchmark folder '{folder}' does not exist.")
    if not manifest_path.is_file() and authors_layout_folders(folder):
        cases = authors_layout_cases(folder)
        if not cases:
            raise InputError(f"'{folder}' is in the authors' layout but its folders hold no <name>_reference.png.")
        return _checked(folder, folder.name, cases, [], folder)
    if not manifest_path.is_file():
        raise InputError(f"'{folder}' has no {MANIFEST_NAME} and is not in the authors' layout "
                         f"({'/, '.join(f'{t}/{p}' for t in AUTHORS_TRACKS for p in AUTHORS_PAIRINGS)}/). Write a "
                         "manifest listing the cases (the format is in docs/evaluation.md).")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{manifest_path} is not valid JSON: {err.msg} at line {err.lineno}, "
                         f"column {err.colno}.") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cases"), list) or not manifest["cases"]:
        raise InputError(f'{manifest_path} must be an object with a non-empty list "cases" '
                         '(see docs/evaluation.md).')
    problems: list[str] = []
    cases = []
    for index, entry in enumerate(manifest["cases"]):
        case = _parse_case(entry, index, folder, problems)
        if case is not None:
            cases.append(case)
    name = manifest.get("name")
    return _checked(folder, name if isinstance(name, str) else folder.name, cases, problems, manifest_path)


def _checked(folder: Path, name: str, cases: list[Case], problems: list[str], where: Path) -> Benchmark:
    """The benchmark, once its ids are unique and its images fit their masks (or every problem, raised)."""
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            problems.append(f"case id '{case.id}' is used twice; ids name the result files and must be unique")
        seen.add(case.id)
    for case in cases:
        _check_images(case, problems)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise InputError(f"The benchmark {where} has {len(problems)} problem(s):\n{listing}")
    return Benchmark(folder, name, cases)


def authors_layout_folders(folder: Path) -> list[tuple[Path, str, str]]:
    """The authors' benchmark folders that ``folder`` holds, with their track and pairing."""
    return [(folder / track_folder / pairing_folder, track, pairing)
            for track_folder, track in AUTHORS_TRACKS.items() for pairing_folder, pairing in AUTHORS_PAIRINGS.items()
            if (folder / track_folder / pairing_folder).is_dir()]


def authors_layout_cases(folder: Path) -> list[Case]:
    """A case per ``<name>_reference.png`` of each authors' folder, named ``<track>-<pairing>-<name>``
    (the folders' own names); its source and source mask are found by name, as the authors' script does."""
    cases = []
    for case_folder, track, pairing in authors_layout_folders(folder):
        for reference in sorted(case_folder.glob("*_reference.png")):
            name = reference.name[: -len("_reference.png")]
            label = re.sub(r"[^A-Za-z0-9._-]", "_", f"{case_folder.parent.name}-{case_folder.name}-{name}")
            cases.append(Case(label[:100], track, pairing, case_folder / f"{name}_source.png",
                              case_folder / f"{name}_source_mask.png", reference))
    return cases


def _parse_case(entry, index: int, folder: Path, problems: list[str]) -> Case | None:
    where = f"case #{index + 1}"
    if not isinstance(entry, dict):
        problems.append(f"{where} is not an object")
        return None
    if isinstance(entry.get("id"), str):
        where = f"case '{entry['id']}'"
    count = len(problems)
    unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        problems.append(f"{where} has unknown key(s) {', '.join(unknown)}; "
                        f"known keys: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in entry:
            problems.append(f"{where} lacks \"{key}\"")
    for key in REQUIRED_KEYS + OPTIONAL_KEYS:
        if key in entry and not (isinstance(entry[key], str) and entry[key].strip()):
            problems.append(f"{where}: \"{key}\" must be a non-empty string")
    if len(problems) > count:
        return None
    if not CASE_ID.fullmatch(entry["id"]):
        problems.append(f"{where}: the id may hold only letters, digits, '.', '_' and '-' (it names files), "
                        "and must start with a letter or digit")
    if entry["track"] not in TRACKS:
        problems.append(f"{where}: track '{entry['track']}' is not one of {', '.join(TRACKS)}")
    if entry["pairing"] not in PAIRINGS:
        problems.append(f"{where}: pairing '{entry['pairing']}' is not one of {', '.join(PAIRINGS)}")
    paths = {}
    for key in ("source", "source_mask", "reference", "reference_mask"):
        if key in entry:
            paths[key] = folder / entry[key]
            if not paths[key].is_file():
                problems.append(f"{where}: {key} '{entry[key]}' does not exist in {folder}")
    if len(problems) > count:
        return None
    return Case(entry["id"], entry["track"], entry["pairing"], paths["source"], paths["source_mask"],
                paths["reference"], paths.get("reference_mask"), entry.get("text"), entry.get("category"))


def _check_images(case: Case, problems: list[str]) -> None:
    where = f"case '{case.id}'"
    try:
        pairs = [("source_mask", case.source_mask, "source", case.source)]
        if case.reference_mask is not None:
            pairs.append(("reference_mask", case.reference_mask, "reference", case.reference))
        for mask_key, mask_path, image_key, image_path in pairs:
            mask_size, expected = image_size(mask_path), image_size(image_path)
            if mask_size != expected:
                problems.append(f"{where}: {mask_key} is {mask_size[0]}x{mask_size[1]} but the {image_key} is "
                                f"{expected[0]}x{expected[1]}; draw the mask on the {image_key} at its size")
                continue
            mask = read_mask(mask_path)
            if not mask.any():
                problems.append(f"{where}: {mask_key} is empty (no pixel above half grey); "
                                "paint the region white")
            elif mask_key == "source_mask" and case.pairing == "inner_id":
                top, left, bottom, right = mask_bounds(mask)
                if min(bottom - top, right - left) < MIN_INNER_CROP:
                    problems.append(f"{where}: the source mask's box is {right - left}x{bottom - top} px; inner-ID "
                                    f"cases need at least {MIN_INNER_CROP} px a side for SSIM and LPIPS")
        image_size(case.reference)
    except InputError as err:
        problems.append(f"{where}: {err}")
