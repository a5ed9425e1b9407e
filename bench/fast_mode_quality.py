"""What fast mode does to the result, on a model that has learnt something: the built-in demo model.

    python bench/fast_mode_quality.py [--pairs 8]

The speed benchmark (``bench/speed.py``) runs random weights, whose outputs say nothing about
quality. The demo model imitates (``tests/test_demo_model.py``), so on its held-out synthetic
pairs each fast setting can be scored the way the imitation test scores the model: the masked
region's error against the ground truth with the right reference (lower is better) and with a
mismatched one (the gap is the imitation), plus the output's mean absolute deviation from exact
50-step DDIM (uint8 levels). Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mimic_core.demo import DEMO_GUIDANCE, DEMO_WORKING_SIZE, demo_model_files  # noqa: E402
from mimic_core.demo.imitation import edit_pair, held_out_pairs, masked_region_error, mismatched_partner  # noqa: E402
from mimic_core.demo.synthetic import TEST_SEED_OFFSET  # noqa: E402
from mimic_core.models import load_models  # noqa: E402
from mimic_core.pipeline import MimicBrushPipeline  # noqa: E402

SETTINGS = {
    "exact: DDIM 50 steps": {"steps": 50},
    "DPM++ 2M 20 steps, reference once": {"steps": 20, "sampler": "dpmpp_2m", "reference_every": 0},
    "... guided_fraction 0.5": {"steps": 20, "sampler": "dpmpp_2m", "reference_every": 0, "guided_fraction": 0.5},
    "... guided_fraction 0.25": {"steps": 20, "sampler": "dpmpp_2m", "reference_every": 0, "guided_fraction": 0.25},
    "... guided_fraction 0 (no guidance)": {"steps": 20, "sampler": "dpmpp_2m", "reference_every": 0,
                                            "guided_fraction": 0.0},
    "DPM++ 2M 20, reference once, deep_features_every 2": {"steps": 20, "sampler": "dpmpp_2m", "reference_every": 0,
                                                           "deep_features_every": 2},
    "... deep_features_every 3": {"steps": 20, "sampler": "dpmpp_2m", "reference_every": 0, "deep_features_every": 3},
    "... deep_features_every 5": {"steps": 20, "sampler": "dpmpp_2m", "reference_every": 0, "deep_features_every": 5},
    "... deep_features_every 3, guided_fraction 0.5": {"steps": 20, "sampler": "dpmpp_2m", "reference_every": 0,
                                                       "deep_features_every": 3, "guided_fraction": 0.5},
    "... deep_features_every 5, guided_fraction 0.5": {"steps": 20, "sampler": "dpmpp_2m", "reference_every": 0,
                                                       "deep_features_every": 5, "guided_fraction": 0.5},
}
FIRST_PAIR = TEST_SEED_OFFSET + 200_000
"""Held-out pairs of their own: neither the imitation test's nor the build check's."""


def edit(pipeline: MimicBrushPipeline, pair, reference: np.ndarray, seed: int, options: dict) -> np.ndarray:
    return edit_pair(pipeline, pair, reference, seed=seed, working_size=DEMO_WORKING_SIZE, guidance=DEMO_GUIDANCE,
                     **options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    files = demo_model_files()
    pipeline = MimicBrushPipeline(load_models(files.checkpoint, files.vae, files.depth_model),
                                  working_size=DEMO_WORKING_SIZE)
    pairs = held_out_pairs(args.pairs, DEMO_WORKING_SIZE, FIRST_PAIR)
    rows, exact_outputs = [], []
    for name, options in SETTINGS.items():
        right, mismatched, deviation = [], [], []
        started = time.perf_counter()
        for index, pair in enumerate(pairs):
            output = edit(pipeline, pair, pair.reference, index, options)
            right.append(masked_region_error(output, pair))
            other = mismatched_partner(pairs, index).reference
            mismatched.append(masked_region_error(edit(pipeline, pair, other, index, options), pair))
            if len(exact_outputs) < len(pairs):  # the first setting is exact DDIM
                exact_outputs.append(output)
            deviation.append(float(np.abs(output.astype(float) - exact_outputs[index].astype(float)).mean()))
        seconds = (time.perf_counter() - started) / (2 * len(pairs))
        rows.append((name, np.mean(right), np.mean(mismatched), np.mean(deviation), seconds))
    print(f"\nDemo model, {args.pairs} held-out pairs, {DEMO_WORKING_SIZE}², guidance {DEMO_GUIDANCE:g}, "
          f"CPU ({torch.get_num_threads()} threads)\n")
    print("| setting | MSE, right reference | MSE, mismatched | right / mismatched | "
          "mean abs deviation from exact (uint8) | s per edit |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, right, mismatched, deviation, seconds in rows:
        print(f"| {name} | {right:.4f} | {mismatched:.4f} | {right / mismatched:.2f} | {deviation:.2f} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
