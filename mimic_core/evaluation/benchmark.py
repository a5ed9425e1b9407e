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
problem found is reported at once with the fix (the first 20 listed, the rest counted): a row
with one problem is still checked for the others, and one file that cannot be read hides no other's.
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
IMAGE_KEYS = ("source", "source_mask", "reference", "reference_mask")
MASKED_IMAGES = (("source_mask", "source"), ("reference_mask", "reference"))
"""Each mask key of a case and the key of the image it is drawn on."""
CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MIN_INNER_CROP = 32
"""Inner-ID crops are compared with SSIM (an 11-pixel window) and LPIPS (AlexNet needs about 32
pixels to reach its last layer), so their mask's box must be at least this many pixels a side."""
MAX_LISTED_PROBLEMS = 20
"""A benchmark's problems listed in its error; the rest are counted, so a broken manifest of thousands of
rows does not flood the terminal."""


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
        return _authors_benchmark(folder)
    if not manifest_path.is_file():
        raise InputError(f"'{folder}' has no {MANIFEST_NAME} and is not in the authors' layout "
                         f"({'/, '.join(f'{t}/{p}' for t in AUTHORS_TRACKS for p in AUTHORS_PAIRINGS)}/). Write a "
                         "manifest listing the cases (the format is in docs/evaluation.md).")
    manifest = _read_manifest(manifest_path)
    problems: list[str] = []
    cases = []
    for index, entry in enumerate(manifest["cases"]):
        case = _parse_case(entry, index, folder, problems)
        if case is not None:
            cases.append(case)
    problems += _duplicate_ids([(f"#{index + 1}", entry["id"]) for index, entry in enumerate(manifest["cases"])
                                if isinstance(entry, dict) and isinstance(entry.get("id"), str)])
    _refuse_problems(manifest_path, problems)
    name = manifest.get("name")
    return Benchmark(folder, name if isinstance(name, str) else folder.name, cases)


def _read_manifest(manifest_path: Path) -> dict:
    """The manifest as an object with a non-empty list of cases; one error when it is not (nothing else can be read)."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{manifest_path} is not valid JSON: {err.msg} at line {err.lineno}, "
                         f"column {err.colno}.") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cases"), list) or not manifest["cases"]:
        raise InputError(f'{manifest_path} must be an object with a non-empty list "cases" '
                         '(see docs/evaluation.md).')
    return manifest


def _authors_benchmark(folder: Path) -> Benchmark:
    cases = authors_layout_cases(folder)
    if not cases:
        raise InputError(f"'{folder}' is in the authors' layout but its folders hold no <name>_reference.png.")
    problems: list[str] = []
    for case in cases:
        files = {"source": case.source, "source_mask": case.source_mask, "reference": case.reference}
        _check_images(f"case '{case.id}'", files, case.pairing == "inner_id", problems)
    problems += _duplicate_ids([(str(case.reference.relative_to(folder)), case.id) for case in cases])
    _refuse_problems(folder, problems)
    return Benchmark(folder, folder.name, cases)


def _duplicate_ids(labelled_ids: list[tuple[str, str]]) -> list[str]:
    """A problem per id that several cases use, naming those cases (by their label: row number or file)."""
    users: dict[str, list[str]] = {}
    for label, case_id in labelled_ids:
        users.setdefault(case_id, []).append(label)
    return [f"case id '{case_id}' is used by {len(labels)} cases ({', '.join(labels)}); ids name the result files: "
            "give each case its own" for case_id, labels in users.items() if len(labels) > 1]


def _refuse_problems(where: Path, problems: list[str]) -> None:
    """One error listing the problems, the first :data:`MAX_LISTED_PROBLEMS` of them and the count of the rest."""
    if not problems:
        return
    listing = "\n".join(f"  - {problem}" for problem in problems[:MAX_LISTED_PROBLEMS])
    unlisted = len(problems) - MAX_LISTED_PROBLEMS
    if unlisted > 0:
        listing += f"\n  ... and {unlisted} more"
    raise InputError(f"The benchmark {where} has {len(problems)} problem(s); fix them and run again (the format is "
                     f"in docs/evaluation.md):\n{listing}")


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
    """The manifest's case ``entry``, or None with its problems added to ``problems``. Every check that the
    entry's valid parts allow is made, so that a row's problems are all listed in one run."""
    if not isinstance(entry, dict):
        problems.append(f"case #{index + 1} is not an object; write it as {{\"id\": ..., \"track\": ..., ...}} "
                        "with the keys of docs/evaluation.md")
        return None
    where = f"case #{index + 1}" + (f" ('{entry['id']}')" if isinstance(entry.get("id"), str) else "")
    count = len(problems)
    fields = _string_fields(entry, where, problems)
    _check_names(fields, where, problems)
    files = _existing_files(fields, folder, where, problems)
    _check_images(where, files, fields.get("pairing") == "inner_id", problems)
    if len(problems) > count:
        return None
    return Case(fields["id"], fields["track"], fields["pairing"], files["source"], files["source_mask"],
                files["reference"], files.get("reference_mask"), fields.get("text"), fields.get("category"))


def _string_fields(entry: dict, where: str, problems: list[str]) -> dict[str, str]:
    """The entry's known keys whose values are non-empty strings; unknown, missing and other keys are problems."""
    unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        problems.append(f"{where} has unknown key(s) {', '.join(unknown)}; "
                        f"known keys: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        quoted = ", ".join(f'"{key}"' for key in missing)
        problems.append(f"{where} lacks {quoted}; every case needs {', '.join(REQUIRED_KEYS)}")
    fields = {}
    for key in REQUIRED_KEYS + OPTIONAL_KEYS:
        if key in entry and not (isinstance(entry[key], str) and entry[key].strip()):
            problems.append(f"{where}: \"{key}\" must be a non-empty string")
        elif key in entry:
            fields[key] = entry[key]
    return fields


def _check_names(fields: dict[str, str], where: str, problems: list[str]) -> None:
    if "id" in fields and not CASE_ID.fullmatch(fields["id"]):
        problems.append(f"{where}: the id may hold only letters, digits, '.', '_' and '-' (it names files), "
                        "and must start with a letter or digit")
    if "track" in fields and fields["track"] not in TRACKS:
        problems.append(f"{where}: track '{fields['track']}' is not one of {', '.join(TRACKS)}")
    if "pairing" in fields and fields["pairing"] not in PAIRINGS:
        problems.append(f"{where}: pairing '{fields['pairing']}' is not one of {', '.join(PAIRINGS)}")


def _existing_files(fields: dict[str, str], folder: Path, where: str, problems: list[str]) -> dict[str, Path]:
    """The entry's image files that exist; each one that does not is a problem."""
    files = {}
    for key in IMAGE_KEYS:
        if key not in fields:
            continue
        path = folder / fields[key]
        if path.is_file():
            files[key] = path
        else:
            problems.append(f"{where}: {key} '{fields[key]}' does not exist in {folder}; check the path (relative "
                            "to the benchmark folder)")
    return files


def _check_images(where: str, files: dict[str, Path], inner_id: bool, problems: list[str]) -> None:
    """Every file opens as an image and every mask fits its image, is not empty and, on an inner-ID case, is
    large enough. Each file is checked on its own, so that one that cannot be read hides no other's problem."""
    sizes = _image_sizes(where, files, problems)
    for mask_key, image_key in MASKED_IMAGES:
        if mask_key not in sizes:
            continue
        if image_key in sizes and sizes[mask_key] != sizes[image_key]:
            (mask_width, mask_height), (width, height) = sizes[mask_key], sizes[image_key]
            problems.append(f"{where}: {mask_key} is {mask_width}x{mask_height} but the {image_key} is "
                            f"{width}x{height}; draw the mask on the {image_key} at its size")
            continue
        _check_mask(where, mask_key, files[mask_key], inner_id and mask_key == "source_mask", problems)


def _image_sizes(where: str, files: dict[str, Path], problems: list[str]) -> dict[str, tuple[int, int]]:
    """(width, height) of each file that opens; each one that does not is a problem."""
    sizes = {}
    for key, path in files.items():
        try:
            sizes[key] = image_size(path)
        except InputError as err:
            problems.append(f"{where}: {key}: {err}")
    return sizes


def _check_mask(where: str, key: str, path: Path, inner_id: bool, problems: list[str]) -> None:
    try:
        mask = read_mask(path)
    except InputError as err:
        problems.append(f"{where}: {key}: {err}")
        return
    if not mask.any():
        problems.append(f"{where}: {key} is empty (no pixel above half grey); paint the region white")
    elif inner_id:
        top, left, bottom, right = mask_bounds(mask)
        if min(bottom - top, right - left) < MIN_INNER_CROP:
            problems.append(f"{where}: the source mask's box is {right - left}x{bottom - top} px; inner-ID "
                            f"cases need at least {MIN_INNER_CROP} px a side for SSIM and LPIPS")
