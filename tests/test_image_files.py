"""Image files read as a viewer shows them: every Pillow mode, deep files scaled, EXIF orientation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mimic_core.errors import InputError
from mimic_core.image_files import read_alpha, read_image, read_image_array, read_rgb_uint8
from mimic_core.training.image_pairs import ImageReadError
from mimic_core.training.image_pairs import read_image as read_training_image

GREY_RAMP = np.linspace(0, 1, 64, dtype=np.float64).reshape(8, 8)


def _save(tmp_path, image: Image.Image, name: str) -> str:
    path = tmp_path / name
    image.save(path)
    return str(path)


def test_a_16_bit_greyscale_png_keeps_its_tones(tmp_path):
    """``Image.convert`` clips 16-bit values at 255: such a file used to come out almost white."""
    deep = Image.fromarray((GREY_RAMP * 65535).round().astype(np.uint16))
    path = _save(tmp_path, deep, "deep.png")
    with Image.open(path) as reopened:
        assert reopened.mode in {"I;16", "I"}
    rgb = read_image_array(path, "RGB")
    assert rgb.shape == (8, 8, 3)
    np.testing.assert_allclose(rgb[..., 0], GREY_RAMP, atol=1e-4)
    np.testing.assert_allclose(read_image_array(path, "L"), GREY_RAMP, atol=1e-4)
    assert read_rgb_uint8(path)[..., 1].tolist() == (GREY_RAMP * 255).round().astype(np.uint8).tolist()


def test_32_bit_integer_and_float_files_are_scaled(tmp_path):
    as_int = _save(tmp_path, Image.fromarray((GREY_RAMP * 65535).astype(np.int32), "I"), "int.tif")
    np.testing.assert_allclose(read_image_array(as_int, "L"), GREY_RAMP, atol=1e-4)
    unit = _save(tmp_path, Image.fromarray(GREY_RAMP.astype(np.float32), "F"), "unit.tif")
    np.testing.assert_allclose(read_image_array(unit, "L"), GREY_RAMP, atol=1e-6)
    bytes_range = _save(tmp_path, Image.fromarray((GREY_RAMP * 255).astype(np.float32), "F"), "bytes.tif")
    np.testing.assert_allclose(read_image_array(bytes_range, "L"), GREY_RAMP, atol=1e-6)


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "RGB", "RGBA", "CMYK"])
def test_eight_bit_modes_read_exactly_as_pillow_converts_them(tmp_path, mode):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).convert(mode)
    path = _save(tmp_path, picture, f"picture.{'jpg' if mode == 'CMYK' else 'png'}")
    with Image.open(path) as reopened:
        expected = np.asarray(reopened.convert("RGB"), np.float32) / 255.0
    assert np.array_equal(read_image_array(path, "RGB"), expected)
    assert read_image(path, "RGB").shape == (1, 12, 10, 3) and read_image(path, "L").shape == (1, 12, 10, 1)


def test_alpha_of_rgba_la_and_palette_transparency(tmp_path):
    alpha = np.tile(np.array([0, 255], np.uint8), (4, 2))
    rgba = Image.fromarray(np.dstack([np.full((4, 4, 3), 200, np.uint8), alpha]), "RGBA")
    assert read_alpha(_save(tmp_path, rgba, "rgba.png")).tolist() == (alpha / 255.0).tolist()
    assert read_alpha(_save(tmp_path, rgba.convert("LA"), "la.png")).tolist() == (alpha / 255.0).tolist()
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.info["transparency"] = 0
    seen = read_alpha(_save(tmp_path, palette, "palette.png"))
    assert seen[1, 1] == 1.0 and seen[0, 0] == 0.0
    assert read_alpha(_save(tmp_path, rgba.convert("RGB"), "opaque.png")) is None


def test_exif_orientation_is_applied_as_a_viewer_applies_it(tmp_path):
    stored = Image.new("RGB", (6, 4), (0, 0, 0))
    stored.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored picture is shown turned 90 degrees clockwise
    path = tmp_path / "turned.jpg"
    stored.save(path, exif=exif, quality=100)
    shown = read_image_array(path, "RGB")
    assert shown.shape == (6, 4, 3)
    assert shown[0, -1].min() > 0.8 and shown[0, 0].max() < 0.2


def test_unreadable_and_empty_files_say_what_to_give(tmp_path):
    junk = tmp_path / "notes.png"
    junk.write_text("not a picture")
    with pytest.raises(InputError, match="Cannot read the image .*notes.png.*PNG, JPEG"):
        read_image_array(junk)
    with pytest.raises(InputError, match="missing.png. does not exist: check the path"):
        read_image_array(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="notes.png"):
        read_training_image(junk)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 65535))
def test_any_deep_grey_value_reads_within_0_and_1_in_proportion(height, width, value):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deep.png"
        Image.fromarray(np.full((height, width), value, np.uint16)).save(path)
        read = read_image_array(path, "L")
    assert read.shape == (height, width)
    np.testing.assert_allclose(read, value / 65535, atol=1e-6)


def test_an_image_that_cannot_be_opened_is_refused_for_its_reason(tmp_path, monkeypatch):
    """Too large, a folder, or damaged: each message names that, not a list of formats the file already is."""
    from PIL import Image

    from mimic_core.image_files import read_image

    with pytest.raises(InputError, match="is a folder, not an image"):
        read_image(tmp_path, "RGB")
    Image.new("RGB", (64, 32)).save(tmp_path / "wide.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(InputError, match="is too large to open .* scale it down first"):
        read_image(tmp_path / "wide.png", "RGB")
