"""Draw the small example images the shipped workflows load (our own, procedurally drawn).

    python tools/make_example_images.py      # writes workflows/inputs/*.png

The sources carry their edit mask in the alpha channel (transparent = regenerate), which is how
ComfyUI's mask editor saves a painted mask, so LoadImage gives both the IMAGE and the MASK.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mimic_core.demo.imitation import another_view, beside_distractor  # noqa: E402
from mimic_core.demo.synthetic import EXAMPLE_SEED, EXAMPLE_SIZE, Pair, make_pair  # noqa: E402

OUT = REPO / "workflows" / "inputs"


def backdrop(width: int, height: int, top, bottom) -> Image.Image:
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (1 - ramp) * np.array(top) + ramp * np.array(bottom)
    return Image.fromarray(np.broadcast_to(pixels, (height, width, 3)).astype(np.uint8))


def mug_scene(width: int, height: int, body_colour) -> tuple[Image.Image, Image.Image]:
    """A mug on a table; returns the picture and the mask of the mug's body (white = edit)."""
    image = backdrop(width, height, (222, 214, 200), (150, 120, 96))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(height * 0.72), width, height], fill=(120, 86, 60))
    left, right, top, bottom = int(width * 0.34), int(width * 0.62), int(height * 0.30), int(height * 0.80)
    draw.ellipse([right - 30, top + 40, right + 60, bottom - 60], outline=(235, 235, 230), width=16)
    draw.rectangle([left, top, right, bottom], fill=body_colour)
    draw.ellipse([left, top - 18, right, top + 18], fill=(90, 70, 60))
    draw.ellipse([left, bottom - 18, right, bottom + 18], fill=body_colour)
    mask = Image.new("L", (width, height), 0)
    mask_draw = ImageDraw.Draw(mask)
    mask_draw.rectangle([left, top + 18, right, bottom], fill=255)
    mask_draw.ellipse([left, bottom - 18, right, bottom + 18], fill=255)
    return image.filter(ImageFilter.SMOOTH), mask


def with_mask_as_alpha(image: Image.Image, mask: Image.Image) -> Image.Image:
    alpha = Image.eval(mask, lambda value: 255 - value)
    rgba = image.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def patterned_vase(width: int, height: int) -> Image.Image:
    """A reference: a vase painted with blue and orange stripes and dots."""
    image = backdrop(width, height, (240, 240, 245), (200, 205, 215))
    pattern = np.zeros((height, width, 3), np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    stripes = ((ys // 14) % 2 == 0)
    pattern[stripes] = (30, 80, 190)
    pattern[~stripes] = (245, 150, 40)
    dots = ((xs % 28 - 14) ** 2 + (ys % 28 - 14) ** 2) < 25
    pattern[dots] = (250, 250, 250)
    shape = Image.new("L", (width, height), 0)
    ImageDraw.Draw(shape).ellipse([width * 0.2, height * 0.15, width * 0.8, height * 0.9], fill=255)
    image.paste(Image.fromarray(pattern), (0, 0), shape)
    return image


def knitted_texture(width: int, height: int) -> Image.Image:
    """A reference for texture transfer: a red knitted fabric."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    weave = 0.5 + 0.25 * np.sin(xs / 3.0 + np.sin(ys / 6.0) * 2) + 0.25 * np.sin(ys / 2.5)
    red = np.stack([150 + 90 * weave, 30 + 40 * weave, 40 + 30 * weave], axis=-1)
    return Image.fromarray(red.clip(0, 255).astype(np.uint8))


def distractor_for(pair: Pair) -> Pair:
    """The first held-out pair after the demo example's whose object shares neither of its colours."""
    colours = {pair.scene.base_colour, pair.scene.pattern_colour}
    seed = EXAMPLE_SEED + 1
    while colours & {(other := make_pair(seed, EXAMPLE_SIZE)).scene.base_colour, other.scene.pattern_colour}:
        seed += 1
    return other


def demo_references() -> tuple[Image.Image, Image.Image]:
    """The two-reference demo's references: the example's object beside a distractor, the object's
    half masked in the alpha channel (as the mask editor saves it), and the object in a third view."""
    pair = make_pair(EXAMPLE_SEED, EXAMPLE_SIZE)
    cluttered, object_half, _ = beside_distractor(pair, distractor_for(pair))
    masked = with_mask_as_alpha(Image.fromarray(cluttered), Image.fromarray((object_half * 255).astype(np.uint8)))
    return masked, Image.fromarray(another_view(pair, EXAMPLE_SEED))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    mug, mask = mug_scene(640, 480, (236, 236, 232))
    with_mask_as_alpha(mug, mask).save(OUT / "mimicbrush_source.png")
    second, second_mask = mug_scene(512, 512, (120, 170, 120))
    with_mask_as_alpha(second, second_mask).save(OUT / "mimicbrush_source_2.png")
    patterned_vase(360, 480).save(OUT / "mimicbrush_reference.png")
    knitted_texture(400, 400).save(OUT / "mimicbrush_texture.png")
    large, large_mask = mug_scene(2400, 1600, (236, 236, 232))
    small_mask = Image.new("L", large.size, 0)
    ImageDraw.Draw(small_mask).rectangle([1150, 820, 1290, 1000], fill=255)  # a patch on the mug only
    with_mask_as_alpha(large, Image.fromarray(np.minimum(np.asarray(small_mask), np.asarray(large_mask)))).save(
        OUT / "mimicbrush_large_source.png")
    demo = REPO / "mimic_core" / "demo" / "examples"  # the demo model's example inputs, made by its build tool
    with Image.open(demo / "source.png") as source, Image.open(demo / "mask.png") as mask:
        with_mask_as_alpha(source.convert("RGB"), mask.convert("L")).save(OUT / "mimicbrush_demo_source.png")
    with Image.open(demo / "reference.png") as reference:
        reference.convert("RGB").save(OUT / "mimicbrush_demo_reference.png")
    cluttered, other_view = demo_references()
    cluttered.save(OUT / "mimicbrush_demo_reference_cluttered.png")
    other_view.save(OUT / "mimicbrush_demo_reference_other_view.png")


if __name__ == "__main__":
    main()
