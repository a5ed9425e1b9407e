"""The training mask: grid cells of the source, masked more often where SIFT matches the reference.

The paper splits the source into an N x N grid (N uniform in 3..10) and masks each cell that holds
a source keypoint matched to the reference with probability 0.75, every other cell with 0.5, so
the masked regions tend to be those the reference can fill. Matches are OpenCV SIFT with Lowe's
ratio test. A mask is never empty: when no cell was drawn, one cell is masked, chosen among the
matched cells when there are any (a sample without a masked pixel teaches nothing).
"""

from __future__ import annotations

import cv2
import numpy as np

from .config import MaskingConfig


def match_keypoints(source: np.ndarray, reference: np.ndarray, ratio: float) -> np.ndarray:
    """``[M, 2]`` (x, y) positions of the source's SIFT keypoints that match the reference."""
    sift = cv2.SIFT_create()
    source_points, source_features = sift.detectAndCompute(cv2.cvtColor(source, cv2.COLOR_RGB2GRAY), None)
    _, reference_features = sift.detectAndCompute(cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY), None)
    if source_features is None or reference_features is None or len(reference_features) < 2:
        return np.zeros((0, 2), dtype=np.float32)
    matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(source_features, reference_features, k=2)
    kept = [pair[0] for pair in matches if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance]
    return np.array([source_points[m.queryIdx].pt for m in kept], dtype=np.float32).reshape(-1, 2)


def cell_edges(length: int, cells: int) -> np.ndarray:
    """The ``cells + 1`` pixel boundaries that split ``length`` into ``cells`` near-equal parts."""
    return np.round(np.linspace(0, length, cells + 1)).astype(int)


def matched_cells(points: np.ndarray, height: int, width: int, cells: int) -> np.ndarray:
    """``cells x cells`` bool: which grid cells hold at least one of ``points`` (x, y)."""
    hit = np.zeros((cells, cells), dtype=bool)
    if len(points):
        rows = np.searchsorted(cell_edges(height, cells), points[:, 1], side="right") - 1
        cols = np.searchsorted(cell_edges(width, cells), points[:, 0], side="right") - 1
        hit[np.clip(rows, 0, cells - 1), np.clip(cols, 0, cells - 1)] = True
    return hit


def draw_cells(matched: np.ndarray, rng: np.random.Generator, matched_probability: float,
               unmatched_probability: float) -> np.ndarray:
    """Which cells are masked: each with its probability, and never none."""
    probability = np.where(matched, matched_probability, unmatched_probability)
    chosen = rng.random(matched.shape) < probability
    if not chosen.any():
        candidates = np.flatnonzero(matched) if matched.any() else np.arange(matched.size)
        chosen.flat[rng.choice(candidates)] = True
    return chosen


def cells_to_mask(chosen: np.ndarray, height: int, width: int) -> np.ndarray:
    """``height x width`` uint8 0/1 mask of the chosen grid cells."""
    rows, cols = cell_edges(height, chosen.shape[0]), cell_edges(width, chosen.shape[1])
    mask = np.zeros((height, width), dtype=np.uint8)
    for row, col in zip(*np.nonzero(chosen)):
        mask[rows[row]:rows[row + 1], cols[col]:cols[col + 1]] = 1
    return mask


def grid_mask(source: np.ndarray, reference: np.ndarray, rng: np.random.Generator,
              config: MaskingConfig) -> np.ndarray:
    """The paper's training mask for ``source`` given ``reference`` (both ``H x W x 3`` uint8)."""
    height, width = source.shape[:2]
    cells = int(rng.integers(config.grid_min, config.grid_max + 1))
    points = match_keypoints(source, reference, config.sift_ratio)
    chosen = draw_cells(matched_cells(points, height, width, cells), rng, config.matched_probability,
                        config.unmatched_probability)
    return cells_to_mask(chosen, height, width)


def pick_segment(labels: np.ndarray, rng: np.random.Generator, min_fraction: float = 0.01) -> np.ndarray | None:
    """One segment of a label map (0 = background) as a 0/1 mask, among those covering at least
    ``min_fraction`` of the image; None when there is none."""
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    large = values[counts >= min_fraction * labels.size]
    if not len(large):
        return None
    return (labels == rng.choice(large)).astype(np.uint8)
