"""What the options beyond the authors' do, on a model that has learnt to imitate: the demo model.

    python bench/edit_options_quality.py [--pairs 12] [--steps 25]
    python bench/edit_options_quality.py --views-only --pairs 96   # two views of the right object alone

On held-out synthetic pairs (``mimic_core.demo.imitation``: the source's whole object masked, so
the source is the ground truth of the masked region) it reports the masked-region error (MSE on
the mask's bounding box, 0..1 pixels; lower is closer to the source) of:

- several references: the right one, a mismatched one, both together, another view of the right
  object alone, and the right one with that view (the two views are drawn alike, so either is
  "the right reference": their mean is what one view alone scores);
- a reference mask: one reference image holding the right object beside a distractor (the
  mismatched pair's reference), with no mask, the right half masked, the distractor half masked;
- reference strength 0, 0.5, 1, 1.5 and denoise 0.25, 0.5, 0.75, 1, each with the right and with
  the mismatched reference (with the mismatched one the error is how far the edit moves from the
  source).

Prints Markdown tables; ``tests/test_demo_model.py`` checks the same comparisons on fewer pairs.
``--views-only`` scores only the two views of the right object, alone and together, on as many
pairs as asked, with the paired differences' means and standard errors: the two views are drawn
alike, so a difference between them is the noise a comparison with either has to clear.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mimic_core.demo import DEMO_GUIDANCE, DEMO_STEPS, DEMO_WORKING_SIZE, demo_model_files  # noqa: E402
from mimic_core.demo.imitation import (another_view, beside_distractor, edit_pair, held_out_pairs,  # noqa: E402
                                       image_tensor, masked_region_error, mismatched_partner)
from mimic_core.demo.synthetic import Pair  # noqa: E402
from mimic_core.models import load_models  # noqa: E402
from mimic_core.pipeline import MimicBrushPipeline  # noqa: E402

STRENGTHS = (0.0, 0.5, 1.0, 1.5)
DENOISES = (0.25, 0.5, 0.75, 1.0)


def reference_conditions(pipeline: MimicBrushPipeline, pairs: list[Pair], index: int, first_seed: int) -> dict:
    """The encoded references of one pair's several-reference and reference-mask conditions."""
    pair, other = pairs[index], mismatched_partner(pairs, index)
    right, wrong = image_tensor(pair.reference), image_tensor(other.reference)
    third = image_tensor(another_view(pair, first_seed + index))
    picture, right_half, distractor_half = beside_distractor(pair, other)
    both = image_tensor(picture)
    return {
        "right": pipeline.encode_reference(right),
        "mismatched": pipeline.encode_reference(wrong),
        "right + mismatched": pipeline.encode_reference([right, wrong]),
        "right in another view": pipeline.encode_reference(third),
        "right + right (another view)": pipeline.encode_reference([right, third]),
        "right beside distractor, no mask": pipeline.encode_reference(both),
        "... right object masked": pipeline.encode_reference(both, torch.from_numpy(right_half)),
        "... distractor masked": pipeline.encode_reference(both, torch.from_numpy(distractor_half)),
    }


def score(pipeline: MimicBrushPipeline, pairs: list[Pair], steps: int, first_seed: int) -> dict[str, list[float]]:
    errors: dict[str, list[float]] = {}

    def edited(name, pair, index, reference, **sampling):
        image = edit_pair(pipeline, pair, reference, steps, index, DEMO_WORKING_SIZE, DEMO_GUIDANCE, **sampling)
        errors.setdefault(name, []).append(masked_region_error(image, pair))

    for index, pair in enumerate(pairs):
        encoded = reference_conditions(pipeline, pairs, index, first_seed)
        for name, reference in encoded.items():
            edited(name, pair, index, reference)
        for which in ("right", "mismatched"):
            for strength in STRENGTHS:
                edited(f"{which}, reference_strength {strength:g}", pair, index, encoded[which],
                       reference_strength=strength)
            for denoise in DENOISES:
                edited(f"{which}, denoise {denoise:g}", pair, index, encoded[which], denoise=denoise)
    return errors


VIEW_CONDITIONS = ("right", "right in another view", "right + right (another view)")


def score_views(pipeline: MimicBrushPipeline, pairs: list[Pair], steps: int, first_seed: int) -> dict[str, np.ndarray]:
    """The masked-region errors of :data:`VIEW_CONDITIONS`, pair by pair."""
    errors: dict[str, list[float]] = {name: [] for name in VIEW_CONDITIONS}
    for index, pair in enumerate(pairs):
        right, third = image_tensor(pair.reference), image_tensor(another_view(pair, first_seed + index))
        for name, images in zip(VIEW_CONDITIONS, (right, third, [right, third])):
            image = edit_pair(pipeline, pair, pipeline.encode_reference(images), steps, index, DEMO_WORKING_SIZE,
                              DEMO_GUIDANCE)
            errors[name].append(masked_region_error(image, pair))
    return {name: np.array(values) for name, values in errors.items()}


def paired_difference(name: str, difference: np.ndarray) -> str:
    """A table row: the mean of per-pair differences, its standard error and how many pairs are lower."""
    error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else float("nan")
    return (f"| {name} | {difference.mean():+.5f} | {error:.5f} | "
            f"{int((difference < 0).sum())}/{len(difference)} |")


def views_table(errors: dict[str, np.ndarray]) -> str:
    """The means of :data:`VIEW_CONDITIONS` and the per-pair differences between them; the last row,
    one view against the other, is the noise floor any comparison with a single view has to clear."""
    own, other, both = (errors[name] for name in VIEW_CONDITIONS)
    rows = ["| condition | masked-region MSE (mean) |", "|---|---:|"]
    rows += [f"| {name} | {errors[name].mean():.5f} |" for name in VIEW_CONDITIONS]
    rows.append(f"| one view alone, either of the two | {np.mean([own, other]):.5f} |")
    rows += ["", "| per-pair difference | mean | standard error | pairs below 0 |", "|---|---:|---:|---:|"]
    rows.append(paired_difference("both views - the pair's own view", both - own))
    rows.append(paired_difference("both views - one view, either of the two", both - (own + other) / 2))
    rows.append(paired_difference("the pair's own view - the other view (noise: drawn alike)", own - other))
    return "\n".join(rows)


def table(errors: dict[str, list[float]], names: list[str]) -> str:
    rows = ["| condition | masked-region MSE (mean) | pairs better than the first row |", "|---|---:|---:|"]
    first = np.array(errors[names[0]])
    for name in names:
        values = np.array(errors[name])
        rows.append(f"| {name} | {values.mean():.5f} | {int((values < first).sum())}/{len(values)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=DEMO_STEPS)
    parser.add_argument("--first-seed", type=int, default=900_000)
    parser.add_argument("--views-only", action="store_true",
                        help="score only the two views of the right object, alone and together, with paired statistics")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    files = demo_model_files()
    pipeline = MimicBrushPipeline(load_models(files.checkpoint, files.vae, files.depth_model),
                                  working_size=DEMO_WORKING_SIZE)
    pairs = held_out_pairs(args.pairs, DEMO_WORKING_SIZE)
    print(f"demo model, {args.pairs} held-out pairs, DDIM {args.steps} steps, guidance {DEMO_GUIDANCE:g}\n")
    if args.views_only:
        print(views_table(score_views(pipeline, pairs, args.steps, args.first_seed)))
        return 0
    errors = score(pipeline, pairs, args.steps, args.first_seed)
    print(table(errors, ["mismatched", "right + mismatched", "right", "right + right (another view)"]) + "\n")
    print(table(errors, ["right", "right in another view", "right + right (another view)"]))
    one_view = np.mean([errors["right"], errors["right in another view"]])
    print(f"one view alone, either of the two: {one_view:.5f}\n")
    print(table(errors, ["right beside distractor, no mask", "... right object masked", "... distractor masked"]) + "\n")
    for which in ("right", "mismatched"):
        print(table(errors, [f"{which}, reference_strength {s:g}" for s in STRENGTHS]) + "\n")
        print(table(errors, [f"{which}, denoise {d:g}" for d in DENOISES]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
