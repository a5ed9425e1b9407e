"""The built-in demo model: the synthetic task it was trained on, its shipped files, and proof that
it imitates the reference.

The imitation test edits held-out synthetic pairs (seeds no training image used; the source's
whole object masked, so only the reference tells what belongs there) three ways and measures
the masked region against the ground truth (MSE on the mask's bounding box, see
``mimic_core.demo.imitation``). Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from mimic_core.checkpoint import PARTS
from mimic_core.demo import (DEMO_GUIDANCE, DEMO_NOTICE, DEMO_STEPS, DEMO_WORKING_SIZE, MODEL_DIR, demo_example,
                             demo_model_files, is_demo_checkpoint)
from mimic_core.demo.imitation import (another_view, beside_distractor, edit_pair, held_out_pairs, image_tensor,
                                      masked_region_error, mismatched_partner, score_imitation)
from mimic_core.demo.synthetic import (CANVAS, TEST_SEED_OFFSET, make_pair, random_view, training_image,
                                       write_training_images)
from mimic_core.files import load_safetensors
from mimic_core.models import load_models
from mimic_core.pipeline import MimicBrushPipeline
from tests.support import as_image_tensor, read_png

PAIRS = 16


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are per-operation overhead: one thread is as fast as two and does not slow down
    many times over when other processes share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline() -> MimicBrushPipeline:
    files = demo_model_files()
    return MimicBrushPipeline(load_models(files.checkpoint, files.vae, files.depth_model),
                              working_size=DEMO_WORKING_SIZE)


# --- the synthetic task ---------------------------------------------------------------------------

def test_pairs_and_training_images_are_a_pure_function_of_their_seed(tmp_path):
    first, again = make_pair(TEST_SEED_OFFSET + 3), make_pair(TEST_SEED_OFFSET + 3)
    for name in ("source", "mask", "reference"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    assert not np.array_equal(first.source, make_pair(TEST_SEED_OFFSET + 4).source)
    image, labels = training_image(5)
    assert np.array_equal(image, training_image(5)[0]) and np.array_equal(labels, training_image(5)[1])

    written = [write_training_images(tmp_path / name, 3, first_seed=10) for name in ("a", "b")]
    for path_a, path_b in zip(*written):
        assert path_a.read_bytes() == path_b.read_bytes()
        mask_a, mask_b = (p.with_name(p.stem + ".mask.png") for p in (path_a, path_b))
        assert mask_a.read_bytes() == mask_b.read_bytes()
    assert cv2.cvtColor(cv2.imread(str(written[0][0])), cv2.COLOR_BGR2RGB).tolist() == training_image(10)[0].tolist()
    with pytest.raises(ValueError, match="below"):
        write_training_images(tmp_path / "c", 2, first_seed=TEST_SEED_OFFSET - 1)


def object_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels far from the (plain) background colour, the median of the image's border."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.abs(image.astype(int) - np.median(border, axis=0)).sum(axis=-1) > 30


def test_the_two_views_differ_in_place_scale_and_colour_and_the_mask_hides_the_whole_object():
    moved, scale_ratios = [], []
    for seed in range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + 20):
        pair = make_pair(seed)
        assert pair.mask.dtype == np.uint8 and set(np.unique(pair.mask)) == {0, 1}
        outside = pair.source[pair.mask == 0].astype(float)
        assert outside.std(axis=0).max() < 1.0  # nothing of the object is visible outside the mask
        in_source, in_reference = object_pixels(pair.source), object_pixels(pair.reference)
        assert not in_source[pair.mask == 0].any()
        centre = [np.argwhere(found).mean(axis=0) for found in (in_source, in_reference)]
        moved.append(np.hypot(*(centre[0] - centre[1])))
        scale_ratios.append(in_reference.sum() / in_source.sum())
        # same colours, slightly changed: the two views' nearest colours lie close together
        colours = [np.unique(image[found], axis=0)[:, None].astype(int)
                   for image, found in ((pair.source, in_source), (pair.reference, in_reference))]
        assert np.median(np.abs(colours[0] - colours[1][:, 0][None]).sum(-1).min(axis=1)) < 40
    assert np.median(moved) > 8  # pixels, at 128
    assert np.mean([abs(np.log(r)) for r in scale_ratios]) > 0.15
    assert min(scale_ratios) < 0.8 and max(scale_ratios) > 1.25


def test_views_have_perspective_and_keep_the_object_inside_the_image():
    rng = np.random.default_rng(0)
    canvas = np.array([[0, 0, 1], [CANVAS, 0, 1], [CANVAS, CANVAS, 1], [0, CANVAS, 1]], dtype=float).T
    for _ in range(50):
        view = random_view(rng, 128)
        corners = view.homography @ canvas
        corners = corners[:2] / corners[2]
        assert corners.min() >= 0 and corners.max() <= 128
        assert np.abs(view.homography[2, :2]).max() > 1e-5  # projective, not affine
        assert np.all(np.abs(view.gain - 1) <= 0.05) and np.all(np.abs(view.offset) <= 5)


# --- the shipped files ----------------------------------------------------------------------------

def test_the_shipped_demo_model_is_small_self_describing_and_documented():
    files = demo_model_files()
    total = sum(path.stat().st_size for path in MODEL_DIR.rglob("*") if path.is_file())
    assert total < 12 * 2 ** 20
    tensors, metadata = load_safetensors(files.checkpoint)
    assert metadata["mimicbrush_format"] == "mimicbrush"
    assert all(json.loads(metadata[f"{part}_config"]) for part in PARTS)
    assert {tensor.dtype for tensor in tensors.values() if tensor.is_floating_point()} == {torch.float16}
    assert json.loads(metadata["unet_config"])["in_channels"] == 13
    info = json.loads((MODEL_DIR / "build_info.json").read_text())
    assert info["working_size"] == DEMO_WORKING_SIZE
    assert "xichenhku/MimicBrush" in DEMO_NOTICE and "DEMO" in DEMO_NOTICE
    assert is_demo_checkpoint(files.checkpoint) and not is_demo_checkpoint(MODEL_DIR / "other.safetensors")


def test_the_example_inputs_edit_inside_the_mask_only(pipeline):
    example = demo_example()
    source, reference = read_png(example.source), read_png(example.reference)
    mask = read_png(example.mask, "L")
    assert source.shape[:2] == mask.shape and set(np.unique(mask)) == {0, 255}
    result = pipeline.edit(as_image_tensor(source), torch.from_numpy(mask / 255.0), as_image_tensor(reference),
                           steps=DEMO_STEPS, guidance=DEMO_GUIDANCE, seed=0)
    edited = np.round(result.images[0].numpy() * 255).astype(np.uint8)
    far = cv2.dilate(mask, np.ones((25, 25), np.uint8)) == 0
    assert np.array_equal(edited[far], source[far])
    assert edited[mask > 0].mean() > 60  # the masked pixels, black in the collage the model saw, were painted


# --- imitation ------------------------------------------------------------------------------------

def test_the_demo_model_imitates_the_reference(pipeline):
    scores = score_imitation(pipeline, held_out_pairs(PAIRS, DEMO_WORKING_SIZE), DEMO_STEPS, DEMO_WORKING_SIZE,
                             DEMO_GUIDANCE)
    right, mismatched, none = (scores.mean(name) for name in ("right", "mismatched", "no_reference"))
    print(f"\nmasked-region MSE on {PAIRS} held-out pairs ({DEMO_STEPS} DDIM steps, guidance {DEMO_GUIDANCE}): "
          f"right reference {right:.5f}, "
          f"mismatched reference {mismatched:.5f}, no reference {none:.5f}; per pair: {scores.errors}")
    assert right <= 0.5 * mismatched
    assert right < none


OPTION_PAIRS = 8
OPTION_STEPS = 10
"""Fewer steps than the imitation test: these compare settings with each other, at a third of its cost."""
VIEW_SEED = 900_000
"""The seeds of the third views, as in ``bench/edit_options_quality.py``."""


@pytest.fixture(scope="module")
def option_errors(pipeline) -> dict[str, float]:
    """Mean masked-region errors of the options beyond the authors' on held-out pairs (the table of
    ``bench/edit_options_quality.py`` on fewer pairs)."""
    pairs = held_out_pairs(OPTION_PAIRS, DEMO_WORKING_SIZE)
    errors: dict[str, list[float]] = {}
    for index, pair in enumerate(pairs):
        other = mismatched_partner(pairs, index)
        right, wrong = image_tensor(pair.reference), image_tensor(other.reference)
        picture, right_half, distractor_half = beside_distractor(pair, other)
        cluttered = image_tensor(picture)
        conditions = {
            "mismatched": (pipeline.encode_reference(wrong), {}),
            "right + mismatched": (pipeline.encode_reference([right, wrong]), {}),
            "cluttered": (pipeline.encode_reference(cluttered), {}),
            "cluttered, right masked": (pipeline.encode_reference(cluttered, torch.from_numpy(right_half)), {}),
            "cluttered, distractor masked": (pipeline.encode_reference(cluttered, torch.from_numpy(distractor_half)),
                                             {}),
        }
        another = image_tensor(another_view(pair, VIEW_SEED + index))
        conditions.update({"right in another view": (pipeline.encode_reference(another), {}),
                           "right + right (another view)": (pipeline.encode_reference([right, another]), {})})
        encoded_right = pipeline.encode_reference(right)
        conditions.update({f"strength {s:g}": (encoded_right, {"reference_strength": s}) for s in (0.0, 0.5, 1.0, 1.5)})
        conditions.update({f"denoise {d:g}": (encoded_right, {"denoise": d}) for d in (0.25, 0.5, 0.75)})
        for name, (reference, options) in conditions.items():
            edited = edit_pair(pipeline, pair, reference, OPTION_STEPS, index, DEMO_WORKING_SIZE, DEMO_GUIDANCE,
                               **options)
            errors.setdefault(name, []).append(masked_region_error(edited, pair))
    means = {name: float(np.mean(values)) for name, values in errors.items()}
    print(f"\nmasked-region MSE of the edit options on {OPTION_PAIRS} held-out pairs, {OPTION_STEPS} steps: {means}")
    return means


def test_a_second_reference_that_is_right_rescues_a_mismatched_one(option_errors):
    assert option_errors["right + mismatched"] < 0.85 * option_errors["mismatched"]


def test_two_views_of_the_right_object_beat_one_view_of_it(option_errors):
    """The two views are drawn alike, so one view alone scores their mean; on 96 pairs
    (``bench/edit_options_quality.py --views-only``) both together beat it by three standard errors
    and the pair's own view by nearly two. These 8 pairs at 10 steps are fewer than that needs (the
    pair's own view alone scores best here), so what is asserted is the comparison with the mean of
    the two, which held by about 4% when written (0.0521 against 0.0545); it is checked on the
    numbers of one machine, not proven by them."""
    one_view = (option_errors["strength 1"] + option_errors["right in another view"]) / 2
    assert option_errors["right + right (another view)"] < one_view


def test_masking_the_distractor_of_a_cluttered_reference_makes_the_edit_follow_it(option_errors):
    """Masking the right object instead helps on average over 12 pairs but not pair by pair (6 of 12
    in the bench), so only the robust half of the claim is asserted; both are printed."""
    assert option_errors["cluttered"] < 0.85 * option_errors["cluttered, distractor masked"]


def test_strength_and_denoise_move_the_error_monotonically(option_errors):
    strengths = [option_errors[f"strength {s:g}"] for s in (0.0, 0.5, 1.0, 1.5)]
    denoises = [option_errors[f"denoise {d:g}"] for d in (0.25, 0.5, 0.75)] + [option_errors["strength 1"]]
    assert strengths == sorted(strengths, reverse=True), strengths
    assert denoises == sorted(denoises), denoises


def test_the_demo_s_preview_colours_fit_its_own_vae_on_a_picture_they_were_not_fitted_on(pipeline):
    """The step previews' latent-to-RGB matrix, fitted on the demo's two example pictures, maps the
    latents of a third (the shape in another view) to its colours at latent resolution, far closer than
    the picture's mean colour does (in a scratch run SD 1.5's matrix did worse than the mean colour)."""
    import torch.nn.functional as F

    from mimic_core.image_files import read_rgb_uint8
    from mimic_core.latent_colours import fit_latent_rgb_factors
    from mimic_core.preprocess import to_model_range
    from tests.support import REPO

    example = demo_example()
    factors = torch.tensor(fit_latent_rgb_factors(
        pipeline.models.vae, [read_rgb_uint8(example.source), read_rgb_uint8(example.reference)],
        pipeline.scaling_factor))
    assert factors.shape == (pipeline.models.vae.config.latent_channels, 3)
    pixels = to_model_range(read_rgb_uint8(REPO / "workflows" / "inputs" / "mimicbrush_demo_reference_other_view.png"))
    with torch.inference_mode():
        latents = pipeline.models.vae.encode(pixels).latent_dist.mean * pipeline.scaling_factor
    colours = F.interpolate(pixels, size=latents.shape[-2:], mode="area")
    previewed = (latents.movedim(1, -1) @ factors).movedim(-1, 1)
    error = (previewed - colours).abs().mean().item()
    mean_colour_error = (colours - colours.mean((2, 3), keepdim=True)).abs().mean().item()
    assert error < 0.15 and error < mean_colour_error / 2, (error, mean_colour_error)


def test_sampling_options_without_a_working_size_take_the_pipeline_s(pipeline):
    """The README's ``sampling=SamplingOptions(...)`` on the demo pipeline works at the demo's size (it
    ran at 512, where the demo model never trained); a working size given in the options wins."""
    from mimic_core.edit_options import SamplingOptions
    from mimic_core.image_files import read_image, read_mask

    example = demo_example()
    source, mask = read_image(example.source, "RGB"), read_mask(example.mask)
    reference = read_image(example.reference, "RGB")
    for sampling, side in ((SamplingOptions(steps=1), DEMO_WORKING_SIZE),
                           (SamplingOptions.with_quality("fast"), DEMO_WORKING_SIZE),
                           (SamplingOptions(steps=1, working_size=64), 64)):
        result = pipeline.edit(source, mask, reference, sampling=sampling)
        assert result.latents.shape[-1] == side // 8, (sampling, result.latents.shape)
