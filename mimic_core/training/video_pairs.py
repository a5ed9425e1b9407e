"""Training pairs from videos: two frames of one clip whose SSIM lies inside a band.

The paper keeps frame pairs that are neither near-duplicates (nothing to learn) nor unrelated
(nothing to imitate), judged by SSIM. Each video is decoded once: ``frames_per_video`` evenly
spaced frames, SSIM of every pair of them (grey, at ``ssim_size`` square, kornia's Gaussian-window
SSIM), and the pairs inside ``[ssim_min, ssim_max]`` are cached in a small JSON file per video. The
cache is valid while the video's path, size and modification time and these settings are
unchanged, so restarts and other processes reuse it; a damaged or unreadable video is recorded
as such, skipped with a warning, and not tried again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import torch

from .data_files import DataError

logger = logging.getLogger(__name__)

SSIM_WINDOW = 11
CACHE_VERSION = 1


@dataclass(frozen=True)
class PairSettings:
    ssim_min: float
    ssim_max: float
    frames_per_video: int
    ssim_size: int


@dataclass(frozen=True)
class VideoPairs:
    """A usable video and its frame pairs ``(first, second, ssim)``."""

    path: Path
    pairs: tuple[tuple[int, int, float], ...]


@dataclass
class VideoIndex:
    """What a scan found: the usable videos, and the names of those skipped and why."""

    videos: list[VideoPairs]
    unreadable: list[str]
    without_pairs: list[str]


class VideoReadError(Exception):
    """A video (or one of its frames) could not be decoded."""


def frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoReadError(f"OpenCV cannot open '{path}'")
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The frames at ``indices`` as ``H x W x 3`` uint8 RGB, by index."""
    capture = cv2.VideoCapture(str(path))
    frames = {}
    try:
        if not capture.isOpened():
            raise VideoReadError(f"OpenCV cannot open '{path}'")
        for index in sorted(set(indices)):
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if not ok or frame is None:
                raise VideoReadError(f"frame {index} of '{path}' cannot be decoded")
            frames[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    return frames


def pairwise_ssim(frames: list[np.ndarray], size: int) -> dict[tuple[int, int], float]:
    """SSIM of every pair (i < j) of ``frames``: grey, resized to ``size`` square, 11-pixel window."""
    import kornia

    grey = [cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (size, size), interpolation=cv2.INTER_AREA)
            for frame in frames]
    stack = torch.from_numpy(np.stack(grey)).float().div(255.0)[:, None]
    pairs = list(combinations(range(len(frames)), 2))
    first = torch.tensor([i for i, _ in pairs])
    second = torch.tensor([j for _, j in pairs])
    with torch.no_grad():
        values = kornia.metrics.ssim(stack[first], stack[second], SSIM_WINDOW).mean(dim=(1, 2, 3))
    return {pair: float(value) for pair, value in zip(pairs, values)}


def find_pairs(path: Path, settings: PairSettings) -> list[tuple[int, int, float]]:
    """Frame pairs of one video whose SSIM lies in the band (raises VideoReadError)."""
    count = frame_count(path)
    if count < 2:
        raise VideoReadError(f"'{path}' reports {count} frame(s)")
    indices = sorted({int(round(i)) for i in np.linspace(0, count - 1, min(settings.frames_per_video, count))})
    frames = read_frames(path, indices)
    similarity = pairwise_ssim([frames[i] for i in indices], settings.ssim_size)
    return [(indices[i], indices[j], round(value, 6)) for (i, j), value in similarity.items()
            if settings.ssim_min <= value <= settings.ssim_max]


def _stamp(path: Path, settings: PairSettings) -> dict:
    stat = path.stat()
    return {"version": CACHE_VERSION, "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "settings": dataclasses.asdict(settings)}


def cache_file(cache_dir: Path, path: Path) -> Path:
    return cache_dir / f"{hashlib.sha1(str(path).encode()).hexdigest()}.json"


def _read_cache(file: Path, stamp: dict) -> dict | None:
    try:
        entry = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(entry, dict) or entry.get("stamp") != stamp:
        return None
    return entry


def _write_cache(file: Path, entry: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f"{file.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(entry))
    partial.replace(file)


def video_pairs(path: Path, cache_dir: Path, settings: PairSettings) -> dict:
    """The cache entry of one video (``pairs`` and ``error``), computed and written when missing or stale."""
    try:
        stamp = _stamp(path, settings)
    except OSError as err:
        return {"pairs": [], "error": f"cannot read it: {err}"}
    file = cache_file(cache_dir, path)
    entry = _read_cache(file, stamp)
    if entry is not None:
        return entry
    try:
        entry = {"stamp": stamp, "pairs": find_pairs(path, settings), "error": None}
    except VideoReadError as err:
        logger.warning("Skipping video '%s': %s.", path, err)
        entry = {"stamp": stamp, "pairs": [], "error": str(err)}
    _write_cache(file, entry)
    return entry


def scan_videos(paths: list[Path], cache_dir: Path, settings: PairSettings, rank: int = 0, world: int = 1) -> None:
    """Fill the cache for this process's share of the videos (every ``world``-th from ``rank``)."""
    for path in paths[rank::world]:
        video_pairs(path, cache_dir, settings)


def index_videos(paths: list[Path], cache_dir: Path, settings: PairSettings) -> VideoIndex:
    """The usable videos and their pairs, from the cache (computing what it lacks)."""
    index = VideoIndex([], [], [])
    for path in paths:
        entry = video_pairs(path, cache_dir, settings)
        if entry.get("error"):
            index.unreadable.append(str(path))
        elif not entry["pairs"]:
            index.without_pairs.append(str(path))
        else:
            index.videos.append(VideoPairs(path, tuple((int(i), int(j), float(s)) for i, j, s in entry["pairs"])))
    return index


def describe(index: VideoIndex, settings: PairSettings) -> str:
    """One line for the log: how many videos are used and why others are not."""
    line = f"{len(index.videos)} videos with frame pairs in the SSIM band [{settings.ssim_min}, {settings.ssim_max}]"
    if index.unreadable:
        line += f"; {len(index.unreadable)} unreadable skipped (e.g. {index.unreadable[0]})"
    if index.without_pairs:
        line += (f"; {len(index.without_pairs)} without a pair in the band skipped (e.g. {index.without_pairs[0]}: "
                 "all its frames are too alike or too different; widen data.ssim_min/ssim_max)")
    return line


def require_videos(index: VideoIndex, settings: PairSettings) -> None:
    """Raise when videos were given but none of them can be used."""
    if not index.videos:
        raise DataError(f"None of the {len(index.unreadable) + len(index.without_pairs)} videos can be used: "
                        f"{describe(index, settings)}.")
