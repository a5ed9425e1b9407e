"""Training samples: a source, its mask and collage, a reference, and the conditioning inputs.

Every sample is a pure function of ``(seed, index)``: which branch (video pair or image pair, in
``video_fraction`` proportion), which video or image, the conditioning dropouts and every random
number of augmentation and masking come from a generator seeded with both. Indices are handed
out per optimiser step (:class:`StepBatches`), so a resumed run, with any number of processes or
loader workers, sees exactly the samples the uninterrupted run would have seen.

The tensors match what inference feeds the networks (``pipeline._edit_square``): images are padded
to a white square and resized with Lanczos to the working size; the collage is the source with
the masked pixels black; CLIP input is the reference through CLIP's preprocessing (all zero when
the reference is dropped: inference's unconditional input); the depth input is the source through
the authors' depth preprocessing, or all zero when depth is dropped, which is exactly what
inference runs the depth model on when shape control is off (see ``shape_control.blank_depth_map``:
the released model never sees a zero depth *map*, it sees the depth of a blank input).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .. import preprocess as pre
from ..depth import DEPTH_SIZE, depth_input_from_image
from .augment import Augmenter
from .config import TrainingConfig
from .data_files import DataError
from .image_pairs import ImageReadError, read_image, read_segments
from .masking import grid_mask, pick_segment
from .video_pairs import VideoPairs, VideoReadError, read_frames

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 20
CLIP_SIZE = 224


@dataclass(frozen=True)
class SamplePlan:
    """The random decisions of one sample, drawn before any pixel is read."""

    kind: str
    item: int
    keep_reference: bool
    keep_depth: bool
    seed: int


class PairDataset(Dataset):
    """Samples indexed by a global sample number (an unbounded index space: there are no epochs)."""

    def __init__(self, config: TrainingConfig, videos: list[VideoPairs], images: list[Path]):
        if not videos and not images:
            raise DataError("There is no training data: no usable video and no image.")
        self.config = config
        self.videos = videos
        self.images = images
        self.size = config.data.resolution
        self.video_augment = Augmenter(config.augment.video, self.size)
        self.image_augment = Augmenter(config.augment.image, self.size)

    def video_share(self) -> float:
        if not self.videos:
            return 0.0
        return self.config.data.video_fraction if self.images else 1.0

    def plan(self, index: int, attempt: int = 0) -> SamplePlan:
        rng = np.random.default_rng([self.config.train.seed, index, attempt])
        kind = "video" if rng.random() < self.video_share() else "image"
        item = int(rng.integers(len(self.videos) if kind == "video" else len(self.images)))
        conditioning = self.config.conditioning
        keep_reference = bool(rng.random() >= conditioning.reference_drop)
        keep_depth = bool(rng.random() >= conditioning.depth_drop)
        return SamplePlan(kind, item, keep_reference, keep_depth, int(rng.integers(2 ** 62)))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for attempt in range(MAX_ATTEMPTS):
            plan = self.plan(index, attempt)
            try:
                return self.build(plan)
            except (VideoReadError, ImageReadError) as err:
                logger.warning("Skipping a sample: %s.", err)
        raise DataError(f"{MAX_ATTEMPTS} samples in a row could not be read; check the training data.")

    def build(self, plan: SamplePlan) -> dict[str, torch.Tensor]:
        """Read the pair, square and augment both images, mask the source (by a segment or the grid)."""
        rng = np.random.default_rng(plan.seed)
        segments = None
        if plan.kind == "video":
            video = self.videos[plan.item]
            first, second, _ = video.pairs[int(rng.integers(len(video.pairs)))]
            frames = read_frames(video.path, [first, second])
            source, reference = (frames[first], frames[second]) if rng.random() < 0.5 else (frames[second], frames[first])
            augment = self.video_augment
        else:
            path = self.images[plan.item]
            source = reference = read_image(path)
            labels = read_segments(path, source.shape[:2])
            if labels is not None and rng.random() < self.config.data.segment_probability:
                segments = pick_segment(labels, rng)
            augment = self.image_augment
        source, reference = self._square(source), self._square(reference)
        if segments is not None:
            segments = self._square_mask(segments)
        source, segment_mask = augment(source, segments, int(rng.integers(2 ** 62)))
        reference, _ = augment(reference, None, int(rng.integers(2 ** 62)))
        if segment_mask.any():
            mask = segment_mask
        else:
            mask = grid_mask(source, reference, rng, self.config.masking)
        return self.tensors(source, mask, reference, plan)

    def _square(self, image: np.ndarray) -> np.ndarray:
        return pre.resize_lanczos(pre.pad_to_square(image, 255), self.size)

    def _square_mask(self, mask: np.ndarray) -> np.ndarray:
        padded = pre.pad_to_square(mask, 0)
        return cv2.resize(padded, (self.size, self.size), interpolation=cv2.INTER_NEAREST)

    def tensors(self, source: np.ndarray, mask: np.ndarray, reference: np.ndarray, plan: SamplePlan) -> dict:
        """The model inputs of one sample, as inference prepares them (module docstring)."""
        collage = pre.make_collage(source, mask)
        clip = pre.clip_pixels(reference)[0] if plan.keep_reference else torch.zeros(3, CLIP_SIZE, CLIP_SIZE)
        depth = depth_input_from_image(source)[0] if plan.keep_depth else torch.zeros(3, DEPTH_SIZE, DEPTH_SIZE)
        return {
            "source": pre.to_model_range(source)[0],
            "collage": pre.to_model_range(collage)[0],
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "reference": pre.to_model_range(reference)[0],
            "clip_pixels": clip.contiguous(),
            "depth_pixels": depth.contiguous(),
            "keep_reference": torch.tensor(plan.keep_reference),
            "keep_depth": torch.tensor(plan.keep_depth),
        }


class StepBatches(Sampler):
    """Micro-batches of sample indices for one process, from optimiser step ``start_step`` on.

    Step ``s`` uses the indices ``[s * total, (s + 1) * total)`` (``total`` = batch size x
    processes x accumulation steps); process ``rank`` takes its slices of them. Unbounded.
    """

    def __init__(self, start_step: int, batch_size: int, accumulation: int, rank: int, world: int):
        self.start_step = start_step
        self.batch_size = batch_size
        self.accumulation = accumulation
        self.rank = rank
        self.world = world

    def __iter__(self):
        step = self.start_step
        while True:
            for micro in range(self.accumulation):
                first = ((step * self.accumulation + micro) * self.world + self.rank) * self.batch_size
                yield list(range(first, first + self.batch_size))
            step += 1
