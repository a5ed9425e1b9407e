"""Finding training files: folders searched recursively, or ``.txt`` lists of paths."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import InputError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MASK_SUFFIX = ".mask.png"


class DataError(InputError):
    """The training data cannot be used as given (nothing found, nothing readable)."""


def _from_list(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read the file list '{list_file}': {err}") from err
    paths = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line).expanduser()
            paths.append(path if path.is_absolute() else list_file.parent / path)
    return paths


def list_files(entries: list[str], suffixes: tuple[str, ...], what: str, key: str) -> list[Path]:
    """Files named by ``entries`` (folders, searched recursively, or ``.txt`` lists), sorted and unique.

    A missing entry is an error naming the config ``key``; files in lists that do not exist are
    skipped with one warning. ``what`` names the kind of file in messages.
    """
    found: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if not path.exists():
            raise DataError(f"'{entry}' (in config key '{key}') does not exist.")
        if path.is_dir():
            found.extend(p for p in path.rglob("*") if p.is_file() and _wanted(p, suffixes))
        elif path.is_file() and path.suffix == ".txt":
            listed = _from_list(path)
            missing = [p for p in listed if not p.is_file()]
            if missing:
                logger.warning("%d of the %d %s listed in '%s' do not exist and are skipped (e.g. %s).",
                               len(missing), len(listed), what, path, missing[0])
            found.extend(p for p in listed if p.is_file())
        elif path.is_file() and _wanted(path, suffixes):
            found.append(path)
        else:
            raise DataError(f"'{entry}' (in config key '{key}') is not a folder, a .txt list or a file of "
                            f"{what} ({' '.join(suffixes)}).")
    unique = sorted({p.resolve() for p in found})
    if entries and not unique:
        raise DataError(f"No {what} were found in {', '.join(entries)} (config key '{key}'); expected files "
                        f"ending in {' '.join(suffixes)}.")
    return unique


def _wanted(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return name.endswith(suffixes) and not name.endswith(MASK_SUFFIX)
