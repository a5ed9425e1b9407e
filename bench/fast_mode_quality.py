"""What fast mode does to the result, on a model that has learnt something: the built-in demo model.

    python bench/fast_mode_quality.py [--pairs 8] [--fewer-steps] [--bf16] [--presets-only]

The speed benchmark (``bench/speed.py``) runs random weights, whose outputs say nothing about
quality. The demo model imitates (``tests/test_demo_model.py``), so on its held-out synthetic
pairs each fast setting can be scored the way the imitation test scores the model: the masked
region's error against the ground truth with the right reference (lower is better) and with a
mismatched one (the gap is the imitation), plus the output's mean absolute deviation from exact
50-step DDIM (uint8 levels). The quality presets (``--quality`` / the sampler's ``quality``) are
scored as they are set. ``--bf16`` adds exact mode and the fast preset once more with the networks
in bf16 (the CPU's fast precision where it is native: on a CPU that only emulates bf16 these rows
take many times longer). ``--fewer-steps`` adds the 6-15-step settings the fast preset was chosen
among; ``--presets-only`` leaves out the single fast settings (exact DDIM stays: it is what the
deviation is measured from). Prints one Markdown table.
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
from mimic_core.edit_options import QUALITY_PRESETS, describe_quality  # noqa: E402
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
PRESETS = {f"quality {name}: {describe_quality(name)}": dict(QUALITY_PRESETS[name]) for name in ("balanced", "fast")}
IN_BF16 = {"exact, networks in bf16": {"steps": 50, "dtype": torch.bfloat16},
           "quality fast, networks in bf16": {**QUALITY_PRESETS["fast"], "dtype": torch.bfloat16}}
FEWER_STEPS = {f"DPM++ 2M {steps} steps, reference once, deep_features_every {every}": {
    "steps": steps, "sampler": "dpmpp_2m", "reference_every": 0, "deep_features_every": every}
    for steps in (6, 8, 10, 12, 15) for every in (1, 3, 5)}
FIRST_PAIR = TEST_SEED_OFFSET + 200_000
"""Held-out pairs of their own: neither the imitation test's nor the build check's."""


def edit(pipeline: MimicBrushPipeline, pair, reference: np.ndarray, seed: int, options: dict) -> np.ndarray:
    return edit_pair(pipeline, pair, reference, seed=seed, working_size=DEMO_WORKING_SIZE, guidance=DEMO_GUIDANCE,
                     **options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--fewer-steps", action="store_true", help="also score the 6-15-step settings")
    parser.add_argument("--bf16", action="store_true", help="also score exact and the fast preset in bf16")
    parser.add_argument("--presets-only", action="store_true",
                        help="score exact DDIM and the presets only, not the single fast settings")
    args = parser.parse_args()
    files = demo_model_files()
    pipelines = {dtype: MimicBrushPipeline(load_models(files.checkpoint, files.vae, files.depth_model, dtype=dtype),
                                           working_size=DEMO_WORKING_SIZE)
                 for dtype in (torch.float32, *((torch.bfloat16,) if args.bf16 else ()))}
    pairs = held_out_pairs(args.pairs, DEMO_WORKING_SIZE, FIRST_PAIR)
    rows, exact_outputs = [], []
    single = dict(list(SETTINGS.items())[:1]) if args.presets_only else SETTINGS
    chosen = {**single, **PRESETS, **(IN_BF16 if args.bf16 else {}), **(FEWER_STEPS if args.fewer_steps else {})}
    for name, settings in chosen.items():
        options = dict(settings)
        pipeline = pipelines[options.pop("dtype", torch.float32)]
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
