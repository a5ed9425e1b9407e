"""The demo's pre/post-processing: bit-exact on the fixture, and sane on any input (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mimic_core import preprocess as pre
from mimic_core.crop import stitch, whole_image_box
from mimic_core.errors import InputError

from tests.support import as_image_tensor, demo_paste_back


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)).max())


def test_fixture_preprocessing_is_bit_exact(fixture_images, golden):
    g = golden["inputs"]
    padded_source = pre.pad_to_square(fixture_images["source"], 255)
    padded_mask = pre.pad_to_square(fixture_images["mask"], 0)
    padded_reference = pre.pad_to_square(fixture_images["reference"], 255)
    collage = pre.make_collage(padded_source, padded_mask)
    assert _max_diff(pre.resize_lanczos(collage, 512), g["collage_512_uint8"]) == 0
    assert _max_diff(pre.resize_lanczos(padded_reference, 512), g["reference_512_uint8"]) == 0
    mask_512 = pre.binary_mask_at(padded_mask, 512)
    assert _max_diff(mask_512, g["mask_512_uint8"]) == 0
    assert torch.equal(pre.latent_mask(mask_512, 64), g["mask_latent"])
    assert torch.equal(pre.clip_pixels(padded_reference), g["clip_pixel_values"])
    collage_tensor = pre.to_model_range(g["collage_512_uint8"].numpy())
    assert collage_tensor.is_contiguous() and collage_tensor.shape == (1, 3, 512, 512)
    assert collage_tensor.min() == -1.0  # the hole is black: -1, not the usual 0


def test_fixture_postprocessing_is_bit_exact(fixture_images, golden):
    on = golden["on"]
    square = pre.output_to_uint8(on["decoded"])[0]
    assert _max_diff(square, on["output_512_uint8"]) == 0
    composite = stitch(fixture_images["source"], fixture_images["mask"], whole_image_box(480, 640), square)
    assert _max_diff(composite, on["composite_uint8"]) == 0


def test_image_conversion_handles_gray_rgba_and_batches():
    gray = torch.rand(1, 5, 7, 1)
    rgba = torch.rand(1, 5, 7, 4)
    assert pre.image_to_uint8(gray).shape == (5, 7, 3)
    assert np.array_equal(pre.image_to_uint8(rgba), pre.image_to_uint8(rgba[..., :3]))
    with pytest.raises(InputError, match="batch of 2"):
        pre.image_to_uint8(torch.rand(2, 5, 7, 3))
    with pytest.raises(InputError, match="channels"):
        pre.image_to_uint8(torch.rand(1, 5, 7, 5))


def test_masks_empty_full_and_of_another_size():
    with pytest.raises(InputError, match="mask is empty"):
        pre.mask_to_binary(torch.zeros(4, 6), 4, 6)
    assert pre.mask_to_binary(torch.ones(1, 4, 6), 4, 6).all()
    resized = pre.mask_to_binary(torch.ones(2, 3), 40, 60)
    assert resized.shape == (40, 60) and resized.all()
    with pytest.raises(InputError, match="another aspect ratio"):
        pre.mask_to_binary(torch.ones(64, 64), 480, 640)


def test_a_uint8_round_trip_through_comfy_floats_is_exact(fixture_images):
    source = fixture_images["source"]
    assert np.array_equal(pre.image_to_uint8(as_image_tensor(source)), source)


sizes = st.integers(min_value=1, max_value=300)


@settings(max_examples=60, deadline=None)
@given(height=sizes, width=sizes, data=st.data())
def test_pad_crop_and_paste_back_keep_geometry(height, width, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    source = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    top, left = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
    mask = np.zeros((height, width), np.uint8)
    mask[top: top + data.draw(st.integers(1, height)), left: left + data.draw(st.integers(1, width))] = 1

    padded = pre.pad_to_square(source, 255)
    side, off_top, off_left = pre.square_offset(height, width)
    assert padded.shape == (side, side, 3)
    assert np.array_equal(padded[off_top:off_top + height, off_left:off_left + width], source)
    assert off_top == (side - height) // 2 and off_left == (side - width) // 2

    square_result = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    composite = stitch(source, mask, whole_image_box(height, width), square_result)
    assert np.array_equal(composite, demo_paste_back(square_result, source, mask))
    assert composite.shape == source.shape and composite.dtype == np.uint8
    untouched = pre.feathered_alpha(mask)[..., 0] == 0
    assert np.array_equal(composite[untouched], source[untouched])
