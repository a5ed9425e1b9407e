"""What the engine's pre-processing takes as an image or a mask: every form ComfyUI produces is
understood, 0..255 data is read right or refused with the range it expects, NaN is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mimic_core.errors import InputError
from mimic_core.preprocess import image_to_uint8, mask_to_binary, uint8_to_image

PICTURE = torch.rand(1, 6, 5, 3)


def test_a_uint8_image_is_read_as_0_to_255():
    as_bytes = (PICTURE * 255).round().to(torch.uint8)
    assert np.array_equal(image_to_uint8(as_bytes), image_to_uint8(PICTURE))


@pytest.mark.parametrize("bad, message", [
    (PICTURE * 255, "floats must be in 0..1: divide a 0..255 picture by 255"),
    (torch.where(torch.rand(1, 6, 5, 3) > 0.5, torch.nan, PICTURE), "NaN or infinite"),
    (torch.full((1, 6, 5, 3), torch.inf), "NaN or infinite"),
])
def test_images_out_of_range_or_not_finite_are_refused_with_the_range_expected(bad, message):
    with pytest.raises(InputError, match=message):
        image_to_uint8(bad, "source image")


@pytest.mark.parametrize("shape", [(6, 5), (1, 6, 5), (6, 5, 1), (1, 6, 5, 1)])
def test_every_mask_shape_comfyui_produces_is_understood(shape):
    mask = torch.zeros(6, 5)
    mask[2:4, 1:3] = 1
    assert mask_to_binary(mask.reshape(shape), 6, 5).tolist() == mask.to(torch.uint8).tolist()


def test_a_0_to_255_mask_is_read_by_its_type_or_refused_as_floats():
    mask = torch.zeros(6, 5, dtype=torch.uint8)
    mask[1:3, 1:3] = 255
    mask[4, 4] = 100  # under half range: not edited, as in the authors' "> 128"
    assert mask_to_binary(mask, 6, 5).sum() == 4
    with pytest.raises(InputError, match="floats must be in 0..1"):
        mask_to_binary(mask.float(), 6, 5)
    with pytest.raises(InputError, match="NaN"):
        mask_to_binary(torch.full((6, 5), torch.nan), 6, 5)


def test_a_read_only_array_converts_without_a_warning(recwarn):
    array = np.zeros((4, 4, 3), np.uint8)
    array.flags.writeable = False
    assert uint8_to_image(array).shape == (1, 4, 4, 3)
    assert not [w for w in recwarn if "writable" in str(w.message)]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.floats(0, 1))
def test_any_unit_float_image_round_trips_through_uint8(height, width, value):
    image = torch.full((height, width, 3), value)
    assert np.array_equal(image_to_uint8(image), np.full((height, width, 3), round(value * 255), np.uint8))
