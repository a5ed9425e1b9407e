"""Crop-and-stitch geometry (property tests over sizes and mask shapes) and crop-mode edits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimic_core import preprocess as pre
from mimic_core.crop import CropBox, cut, mask_bounds, plan_crop, region_masks, stitch, whole_image_box
from mimic_core.errors import InputError

from tests.support import as_image_tensor, demo_paste_back


@st.composite
def image_and_mask(draw, max_side=8192):
    """Sizes from 1 px to 8k on either axis (mostly small, so examples stay cheap), and masks that are
    a dot, a thin line, a border-touching block, everything, or several islands."""
    height = draw(st.one_of(st.integers(1, 64), st.integers(1, max_side)))
    width = draw(st.one_of(st.integers(1, 64), st.integers(1, max_side // max(1, height // 512))))
    mask = np.zeros((height, width), np.uint8)
    kind = draw(st.sampled_from(["dot", "hline", "vline", "border", "all", "islands"]))
    y, x = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
    if kind == "dot":
        mask[y, x] = 1
    elif kind == "hline":
        mask[y, :] = 1
    elif kind == "vline":
        mask[:, x] = 1
    elif kind == "border":
        mask[: y + 1, x:] = 1
    elif kind == "all":
        mask[:] = 1
    else:
        for _ in range(draw(st.integers(2, 5))):
            y, x = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
            mask[y: y + draw(st.integers(1, 40)), x: x + draw(st.integers(1, 40))] = 1
    return height, width, mask


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=image_and_mask(), context=st.floats(1.0, 4.0), min_side=st.integers(1, 1024), data=st.data())
def test_crop_contains_the_mask_and_stitching_leaves_everything_else_bit_exact(case, context, min_side, data):
    height, width, mask = case
    for part in [mask] + (region_masks(mask) if data.draw(st.booleans()) else []):
        box = plan_crop(part, context, min_side)
        top, left, bottom, right = mask_bounds(part)
        assert box.top <= top and box.left <= left and box.bottom >= bottom and box.right >= right
        assert box.side <= max(height, width)
        # padded only on an axis where the image is smaller than the box
        if box.side <= height:
            assert 0 <= box.top and box.bottom <= height
        if box.side <= width:
            assert 0 <= box.left and box.right <= width

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    original = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    box = plan_crop(mask, context, min_side)
    crop = cut(original, box, 255)
    assert crop.shape == (box.side, box.side, 3)
    edited = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = stitch(original, mask, box, edited)
    assert out.shape == original.shape and out.dtype == np.uint8
    touched = np.zeros((height, width), bool)
    top, left, bottom, right = mask_bounds(mask)
    touched[max(top - 10, 0): bottom + 10, max(left - 10, 0): right + 10] = True
    assert np.array_equal(out[~touched], original[~touched])
    # where the feathered mask is fully on, the stitched pixels are the edit's, resized to the box
    resized = cv2.resize(edited, (box.side, box.side), interpolation=cv2.INTER_LINEAR)
    fully_on = pre.feathered_alpha(mask)[..., 0] == 1.0
    ys, xs = np.nonzero(fully_on)
    assert np.array_equal(out[ys, xs], resized[ys - box.top, xs - box.left])


def test_whole_image_box_reproduces_the_demo_paste_back(fixture_images, golden):
    source, mask = fixture_images["source"], fixture_images["mask"]
    square = golden["on"]["output_512_uint8"].numpy()
    demo = demo_paste_back(square, source, mask)
    assert np.array_equal(stitch(source, mask, whole_image_box(*source.shape[:2]), square), demo)


def test_the_blend_band_is_at_the_original_scale():
    original = np.full((2000, 3000, 3), 100, np.uint8)
    mask = np.zeros((2000, 3000), np.uint8)
    mask[1000:1040, 1500:1540] = 1
    out = stitch(original, mask, plan_crop(mask), np.zeros((512, 512, 3), np.uint8))
    changed_rows = np.flatnonzero((out != original).any(axis=(1, 2)))
    assert changed_rows.min() >= 1000 - 10 and changed_rows.max() < 1040 + 10


def test_several_islands_give_one_crop_each():
    mask = np.zeros((400, 400), np.uint8)
    mask[10:20, 10:20] = 1
    mask[300:330, 350:380] = 1
    parts = region_masks(mask)
    assert len(parts) == 2 and sum(part.sum() for part in parts) == mask.sum()
    assert all(plan_crop(part).side < plan_crop(mask).side for part in parts)


@pytest.mark.parametrize("context", [0.5, float("nan"), float("inf")])
def test_bad_crop_options(context):
    with pytest.raises(InputError, match="context must be a finite number of 1 or more"):
        plan_crop(np.ones((4, 4), np.uint8), context=context)
    with pytest.raises(InputError, match="empty"):
        plan_crop(np.zeros((4, 4), np.uint8))
    assert cut(np.zeros((2, 3), np.uint8), CropBox(-1, -1, 5), 7).shape == (5, 5)


@pytest.mark.parametrize("height,width,region,size", [(97, 301, "crop", 512), (700, 230, "crop_each", 256),
                                                      (333, 333, "crop", 640)])
def test_crop_mode_edits_end_to_end_on_odd_sizes(tiny_pipeline, height, width, region, size):
    rng = np.random.default_rng(height)
    source = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.float32)
    mask[height // 3: height // 3 + 9, width // 4: width // 4 + 13] = 1
    mask[-5:, -7:] = 1
    reference = as_image_tensor(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8))
    result = tiny_pipeline.edit(as_image_tensor(source), torch.from_numpy(mask), reference, steps=1,
                                region=region, working_size=size, keep_shape=True)
    out = (result.images[0] * 255).round().to(torch.uint8).numpy()
    assert out.shape == source.shape and result.latents.shape[-1] == size // 8
    far = np.ones((height, width), bool)
    far[height // 3 - 11: height // 3 + 20, width // 4 - 11: width // 4 + 24] = False
    far[-16:, -18:] = False
    assert np.array_equal(out[far], source[far])


def test_other_working_sizes_need_multiples_of_64(tiny_pipeline, fixture_images):
    with pytest.raises(InputError, match="multiple of 64"):
        tiny_pipeline.edit(as_image_tensor(fixture_images["source"]),
                           torch.from_numpy(fixture_images["mask"].astype(np.float32)),
                           as_image_tensor(fixture_images["reference"]), steps=1, working_size=500)
