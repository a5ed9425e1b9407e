"""How much detail crop mode gains: working-image pixels per source pixel for the masked region.

    python bench/crop_resolution.py [--working-size 512] [--context 2.0] [--min-side 256]

Whole-image mode (the authors') scales the whole padded square to the working size; crop mode
scales only a square around the mask. The ratio is the linear resolution at which the masked
region is generated; 1.0 means every source pixel gets a working pixel (full detail).
"""

from __future__ import annotations

import argparse

import numpy as np

from mimic_core.crop import plan_crop, whole_image_box

CASES = [  # (source height, width, mask height, width)
    (480, 640, 200, 150),
    (1024, 1024, 100, 100),
    (3000, 4000, 300, 400),
    (3000, 4000, 60, 80),
    (4000, 3000, 1500, 1000),
    (2160, 3840, 200, 200),
    (8000, 8000, 400, 400),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--working-size", type=int, default=512)
    parser.add_argument("--context", type=float, default=2.0)
    parser.add_argument("--min-side", type=int, default=256)
    args = parser.parse_args()
    print(f"working size {args.working_size}, context {args.context}, min side {args.min_side}")
    print("| source | mask | whole-image px/px | crop side | crop px/px | gain |")
    print("|---|---|---:|---:|---:|---:|")
    for height, width, mask_h, mask_w in CASES:
        mask = np.zeros((height, width), np.uint8)
        top, left = (height - mask_h) // 2, (width - mask_w) // 2
        mask[top:top + mask_h, left:left + mask_w] = 1
        whole = args.working_size / whole_image_box(height, width).side
        box = plan_crop(mask, args.context, args.min_side)
        crop = args.working_size / box.side
        print(f"| {width}x{height} | {mask_w}x{mask_h} | {whole:.3f} | {box.side} | {crop:.3f} | {crop / whole:.1f}x |")


if __name__ == "__main__":
    main()
