"""The paper's cropping rules on synthetic masks: boxes, union boxes, background removal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mimic_core.errors import InputError
from mimic_core.evaluation.cropping import (
    BACKGROUND,
    Box,
    bounding_box,
    crop,
    inner_id_crops,
    inter_id_crops,
    masked_crop,
    remove_background,
)


def rectangle(height, width, top, left, bottom, right):
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def picture(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_box_of_a_rectangle_is_the_rectangle():
    box = bounding_box(rectangle(40, 60, 5, 7, 25, 50))
    assert box == Box(5, 7, 25, 50)
    assert (box.height, box.width) == (20, 43)


def test_box_of_separate_regions_is_the_box_of_their_union():
    mask = rectangle(50, 80, 2, 3, 10, 12) | rectangle(50, 80, 30, 60, 45, 70)
    assert bounding_box(mask) == Box(2, 3, 45, 70)


def test_empty_mask_is_refused():
    with pytest.raises(InputError, match="empty"):
        bounding_box(np.zeros((8, 8), bool))


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24))).filter(lambda mask: mask.any()))
def test_box_holds_every_masked_pixel_and_is_tight(mask):
    box = bounding_box(mask)
    inside = np.zeros_like(mask)
    inside[box.top:box.bottom, box.left:box.right] = True
    assert not (mask & ~inside).any()
    assert mask[box.top].any() and mask[box.bottom - 1].any()
    assert mask[:, box.left].any() and mask[:, box.right - 1].any()


@settings(max_examples=40, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 20), st.integers(1, 20))).filter(lambda mask: mask.any()),
       st.integers(0, 2**32 - 1))
def test_masked_crop_keeps_the_masked_pixels_and_whitens_the_rest(mask, seed):
    image = picture(*mask.shape, seed)
    cropped = masked_crop(image, mask)
    box = bounding_box(mask)
    region = crop(mask, box)
    assert cropped.shape == (box.height, box.width, 3)
    np.testing.assert_array_equal(cropped[region], crop(image, box)[region])
    assert (cropped[~region] == BACKGROUND).all()


def test_remove_background_leaves_the_input_untouched():
    image = picture(10, 12)
    before = image.copy()
    out = remove_background(image, rectangle(10, 12, 2, 2, 5, 5))
    np.testing.assert_array_equal(image, before)
    assert (out[0, 0] == BACKGROUND).all() and (out[3, 3] == image[3, 3]).all()


def test_inner_id_crops_cut_both_images_to_the_source_mask_box_without_blanking():
    source, edited = picture(40, 50, 1), picture(40, 50, 2)
    mask = rectangle(40, 50, 10, 5, 30, 20) & ~rectangle(40, 50, 15, 8, 20, 12)  # a hole inside the box
    edited_crop, source_crop = inner_id_crops(edited, source, mask)
    np.testing.assert_array_equal(edited_crop, edited[10:30, 5:20])
    np.testing.assert_array_equal(source_crop, source[10:30, 5:20])


def test_inter_id_crops_use_each_image_own_mask():
    edited, reference = picture(40, 50, 3), picture(30, 20, 4)
    source_mask, reference_mask = rectangle(40, 50, 4, 6, 14, 26), rectangle(30, 20, 10, 2, 28, 9)
    edited_crop, reference_crop = inter_id_crops(edited, source_mask, reference, reference_mask)
    np.testing.assert_array_equal(edited_crop, edited[4:14, 6:26])
    np.testing.assert_array_equal(reference_crop, reference[10:28, 2:9])


def test_inter_id_without_reference_mask_uses_the_whole_reference():
    edited, reference = picture(40, 50, 5), picture(30, 20, 6)
    mask = rectangle(40, 50, 0, 0, 20, 20) | rectangle(40, 50, 30, 40, 35, 45)
    edited_crop, reference_crop = inter_id_crops(edited, mask, reference, None)
    assert edited_crop.shape == (35, 45, 3)
    assert (edited_crop[25, 30] == BACKGROUND).all()  # between the two regions: background
    np.testing.assert_array_equal(reference_crop, reference)
