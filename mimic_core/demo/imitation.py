"""Does a model imitate? Edits of held-out synthetic pairs with the right reference, a mismatched
reference and no reference, scored against the ground truth.

Each held-out pair (:func:`~mimic_core.demo.synthetic.make_pair`) has its whole object masked in
the source, so the source itself is the ground truth of the masked region, and only the
reference tells what belongs there. Every pair is edited three ways with the same seed:

- **right**: with its own reference (another view of the same object);
- **mismatched**: with the reference of the next pair whose object shares neither colour with
  this one (another object; with eight palette colours, the very next pair's shares one about
  half the time, and is then partly a matching reference);
- **no reference**: :meth:`MimicBrushPipeline.no_reference`, the model's unconditional branch
  alone, a plain inpainter (the baseline).

The error is the mean squared error (0..1 pixel values) between the edited image and the source
on the evaluation harness's inner-ID crop (the bounding box of the mask,
:func:`~mimic_core.evaluation.cropping.inner_id_crops`), computed from the harness's PSNR
(:func:`~mimic_core.evaluation.metrics.psnr`) as ``10 ** (-PSNR / 10)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation.cropping import inner_id_crops
from ..evaluation.metrics import psnr, to_unit_tensor
from ..pipeline import MimicBrushPipeline
from .synthetic import TEST_SEED_OFFSET, Pair, make_pair, random_view, render

CONDITIONS = ("right", "mismatched", "no_reference")


@dataclass(frozen=True)
class ImitationScores:
    """Per-pair masked-region errors (MSE) of each condition, in pair order."""

    errors: dict[str, list[float]]

    def mean(self, condition: str) -> float:
        return float(np.mean(self.errors[condition]))

    def summary(self) -> str:
        return ", ".join(f"{condition} {self.mean(condition):.5f}" for condition in CONDITIONS)


def masked_region_error(edited: np.ndarray, pair: Pair) -> float:
    """MSE between ``edited`` (uint8) and the pair's source on the mask's bounding box."""
    edited_crop, truth_crop = inner_id_crops(edited, pair.source, pair.mask)
    return 10.0 ** (-psnr(to_unit_tensor(edited_crop), to_unit_tensor(truth_crop)) / 10.0)


def held_out_pairs(count: int, size: int, first: int = TEST_SEED_OFFSET) -> list[Pair]:
    return [make_pair(first + index, size) for index in range(count)]


def image_tensor(array: np.ndarray) -> torch.Tensor:
    """A uint8 picture as the engine takes it: ``[1, H, W, 3]`` floats in 0..1."""
    return torch.from_numpy(array.astype(np.float32) / 255.0)[None]


def another_view(pair: Pair, seed: int) -> np.ndarray:
    """A third view of the pair's object, independent of its source and reference views."""
    return render(pair.scene, random_view(np.random.default_rng([seed, 2]), pair.reference.shape[0]),
                  pair.reference.shape[0])[0]


def beside_distractor(pair: Pair, distractor: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One reference image, the right object on the left and the distractor on the right, and the
    masks of its two halves (right object, distractor)."""
    picture = np.concatenate([pair.reference, distractor.reference], axis=1)
    left = np.zeros(picture.shape[:2], np.float32)
    left[:, : pair.reference.shape[1]] = 1.0
    return picture, left, 1.0 - left


def edit_pair(pipeline: MimicBrushPipeline, pair: Pair, reference, steps: int, seed: int,
              working_size: int, guidance: float, **sampling) -> np.ndarray:
    """The edited source (uint8) for one reference (an image array or an encoded reference);
    ``sampling``: the edit's other sampling options (fast mode's)."""
    if isinstance(reference, np.ndarray):
        reference = image_tensor(reference)
    result = pipeline.edit(image_tensor(pair.source), torch.from_numpy(pair.mask.astype(np.float32)), reference,
                           steps=steps, seed=seed, working_size=working_size, guidance=guidance, **sampling)
    return np.clip(np.round(result.images[0].float().numpy() * 255), 0, 255).astype(np.uint8)


def mismatched_partner(pairs: list[Pair], index: int) -> Pair:
    """The first pair after ``index`` (cyclically) whose object has neither of its two colours."""
    colours = {pairs[index].scene.base_colour, pairs[index].scene.pattern_colour}
    for step in range(1, len(pairs)):
        other = pairs[(index + step) % len(pairs)]
        if not colours & {other.scene.base_colour, other.scene.pattern_colour}:
            return other
    raise ValueError(f"no pair has colours other than pair {index}'s: use more pairs")


def score_imitation(pipeline: MimicBrushPipeline, pairs: list[Pair], steps: int, working_size: int,
                    guidance: float, seed: int = 0) -> ImitationScores:
    """Errors of the three conditions on ``pairs`` (at least two; the mismatched reference of a
    pair is :func:`mismatched_partner`'s)."""
    if len(pairs) < 2:
        raise ValueError("at least two pairs are needed (a mismatched reference is another pair's)")
    blank = pipeline.no_reference()
    errors: dict[str, list[float]] = {condition: [] for condition in CONDITIONS}
    for index, pair in enumerate(pairs):
        references = {"right": pair.reference, "mismatched": mismatched_partner(pairs, index).reference,
                      "no_reference": blank}
        for condition, reference in references.items():
            edited = edit_pair(pipeline, pair, reference, steps, seed + index, working_size, guidance)
            errors[condition].append(masked_region_error(edited, pair))
    return ImitationScores(errors)
