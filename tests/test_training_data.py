"""Training data: grid masking statistics, SIFT matching, the video pair picker's SSIM band and cache,
augmentation alignment, and the samples the networks are fed. Synthetic videos and images are
generated here; nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mimic_core.training.augment import Augmenter
from mimic_core.training.config import load_config
from mimic_core.training.data_files import IMAGE_SUFFIXES, VIDEO_SUFFIXES, DataError, list_files
from mimic_core.training.dataset import PairDataset, StepBatches
from mimic_core.training.masking import (cell_edges, cells_to_mask, draw_cells, grid_mask, match_keypoints, matched_cells,
                                         pick_segment)
from mimic_core.training.video_pairs import (PairSettings, cache_file, find_pairs, index_videos, read_frames,
                                             require_videos)

DEFAULTS = load_config(overrides=["data.images=[unused]", "model.checkpoint=unused", "model.vae=unused",
                                  "model.depth_model=unused"])


pytestmark = pytest.mark.usefixtures("one_thread")


def textured_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Coarse colour noise with a few rectangles: corners for SIFT, structure for SSIM."""
    image = cv2.resize((rng.random((height // 4, width // 4, 3)) * 255).astype(np.uint8), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    for _ in range(6):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        corner = tuple(int(v) for v in rng.integers(0, min(height, width), 2))
        cv2.rectangle(image, corner, (corner[0] + width // 5, corner[1] + height // 5), colour, -1)
    return image


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    """RGB frames as an MJPG .avi (OpenCV's built-in codec, available in every build)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def crossfade_video(path: Path, seed: int, frames: int = 12, size: tuple[int, int] = (96, 128)) -> Path:
    """Frames fading from one texture to another: SSIM falls steadily with the distance in time."""
    rng = np.random.default_rng(seed)
    start, end = textured_image(rng, *size), textured_image(rng, *size)
    return write_video(path, [cv2.addWeighted(start, 1 - i / (frames - 1), end, i / (frames - 1), 0)
                              for i in range(frames)])


def independent_ssim(first: np.ndarray, second: np.ndarray, size: int) -> float:
    """torchmetrics' SSIM (another implementation than the picker's kornia) on the same grey frames."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    grey = [torch.from_numpy(cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (size, size),
                                        interpolation=cv2.INTER_AREA)).float()[None, None] / 255 for f in (first, second)]
    return float(structural_similarity_index_measure(grey[0], grey[1], data_range=1.0))


# --- masking ----------------------------------------------------------------------------------

def test_matched_cells_are_masked_three_times_in_four_and_the_others_half_the_time():
    rng = np.random.default_rng(0)
    matched = np.zeros((6, 6), dtype=bool)
    matched[:3] = True
    draws = np.stack([draw_cells(matched, rng, 0.75, 0.5) for _ in range(3000)])
    assert abs(draws[:, matched].mean() - 0.75) < 0.01
    assert abs(draws[:, ~matched].mean() - 0.5) < 0.01


def test_grid_size_is_uniform_from_3_to_10_and_a_mask_is_never_empty():
    """With both probabilities 0 only the never-empty rule masks anything: exactly one cell, whose
    width gives the grid size N that was drawn."""
    config = dataclasses.replace(DEFAULTS.masking, matched_probability=0.0, unmatched_probability=0.0)
    image = np.zeros((120, 120, 3), dtype=np.uint8)  # no keypoints: every cell is unmatched
    rng = np.random.default_rng(1)
    sizes = []
    for _ in range(800):
        mask = grid_mask(image, image, rng, config)
        rows, cols = np.nonzero(mask)
        assert mask.any()
        sizes.append(round(120 / (cols.max() - cols.min() + 1)))
        assert mask.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    counts = np.bincount(sizes, minlength=11)
    assert counts[:3].sum() == 0 and counts[11:].sum() == 0
    assert all(60 <= count <= 140 for count in counts[3:11]), counts


@settings(max_examples=60, deadline=None)
@given(cells=st.integers(1, 10), seed=st.integers(0, 2 ** 32 - 1), p_matched=st.floats(0, 1),
       p_other=st.floats(0, 1), density=st.floats(0, 1))
def test_the_drawn_cells_are_never_none_and_fall_back_on_a_matched_cell(cells, seed, p_matched, p_other, density):
    rng = np.random.default_rng(seed)
    matched = rng.random((cells, cells)) < density
    chosen = draw_cells(matched, rng, p_matched, p_other)
    assert chosen.any()
    fallback = draw_cells(matched, np.random.default_rng(seed), 0.0, 0.0)
    assert fallback.sum() == 1
    if matched.any():
        assert matched[fallback].all()
    assert cells_to_mask(chosen, 37, 53).sum() >= (37 // cells) * (53 // cells)


def test_sift_matches_a_shifted_copy_and_the_mask_follows_the_matched_cells():
    rng = np.random.default_rng(2)
    scene = textured_image(rng, 160, 200)
    source, reference = scene[:, :160], scene[:, 40:200]  # the right three quarters of the source reappear
    points = match_keypoints(source, reference, 0.75)
    assert len(points) >= 10
    assert (points[:, 0] >= 40 - 3).mean() > 0.9  # matches lie where the content is shared
    unrelated = match_keypoints(source, textured_image(np.random.default_rng(3), 160, 160), 0.75)
    assert len(unrelated) < len(points) / 3

    config = dataclasses.replace(DEFAULTS.masking, matched_probability=1.0, unmatched_probability=0.0)
    for seed in range(5):
        mask = grid_mask(source, reference, np.random.default_rng(seed), config)
        cells = int(np.random.default_rng(seed).integers(config.grid_min, config.grid_max + 1))
        expected = matched_cells(points, 160, 160, cells)
        rows, cols = cell_edges(160, cells), cell_edges(160, cells)
        for r in range(cells):
            for c in range(cells):
                assert (mask[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] == expected[r, c]).all()


def test_a_segment_is_picked_among_the_large_ones():
    labels = np.zeros((50, 50), dtype=np.int64)
    labels[:20, :20] = 3
    labels[0, 49] = 7  # one pixel: too small to be a training mask
    mask = pick_segment(labels, np.random.default_rng(0))
    assert (mask == (labels == 3)).all()
    assert pick_segment(np.zeros((10, 10), dtype=np.int64), np.random.default_rng(0)) is None


# --- video pairs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    still = textured_image(np.random.default_rng(9), 96, 128)
    paths = {
        "fade": crossfade_video(root / "fade.avi", seed=4),
        "still": write_video(root / "still.avi", [still] * 6),
        "broken": root / "broken.avi",
    }
    paths["broken"].write_bytes(b"not a video at all" * 100)
    return paths


def test_the_pair_picker_keeps_exactly_the_pairs_inside_the_ssim_band(videos):
    settings_ = PairSettings(ssim_min=0.4, ssim_max=0.85, frames_per_video=12, ssim_size=64)
    pairs = find_pairs(videos["fade"], settings_)
    frames = read_frames(videos["fade"], list(range(12)))
    picked = {(i, j) for i, j, _ in pairs}
    outside_low = outside_high = 0
    for i in range(12):
        for j in range(i + 1, 12):
            value = independent_ssim(frames[i], frames[j], 64)
            if (i, j) in picked:
                assert 0.4 - 1e-3 <= value <= 0.85 + 1e-3, (i, j, value)
            else:
                assert not 0.4 + 1e-3 < value < 0.85 - 1e-3, (i, j, value)
                outside_low += value < 0.4
                outside_high += value > 0.85
    assert picked and outside_low and outside_high  # the band excluded pairs on both sides


def test_still_and_unreadable_videos_are_skipped_with_a_warning_and_nothing_usable_is_an_error(videos, tmp_path, caplog):
    settings_ = PairSettings(ssim_min=0.4, ssim_max=0.85, frames_per_video=6, ssim_size=64)
    with caplog.at_level(logging.WARNING, logger="mimic_core"):
        index = index_videos([videos["still"], videos["broken"], videos["fade"]], tmp_path, settings_)
    assert [v.path for v in index.videos] == [videos["fade"]]
    assert index.without_pairs == [str(videos["still"])]
    assert index.unreadable == [str(videos["broken"])]
    assert "broken.avi" in caplog.text
    unusable = index_videos([videos["still"], videos["broken"]], tmp_path, settings_)
    with pytest.raises(DataError, match="None of the 2 videos can be used"):
        require_videos(unusable, settings_)


def test_pair_choices_are_cached_and_recomputed_when_the_video_changes(videos, tmp_path):
    settings_ = PairSettings(ssim_min=0.4, ssim_max=0.85, frames_per_video=12, ssim_size=64)
    first = index_videos([videos["fade"]], tmp_path, settings_).videos[0].pairs
    entry_file = cache_file(tmp_path, videos["fade"])
    entry = json.loads(entry_file.read_text())
    entry["pairs"] = entry["pairs"][:1]
    entry_file.write_text(json.dumps(entry))
    assert index_videos([videos["fade"]], tmp_path, settings_).videos[0].pairs == first[:1]  # read from the cache

    wider = dataclasses.replace(settings_, ssim_max=0.99)
    assert len(index_videos([videos["fade"]], tmp_path, wider).videos[0].pairs) > len(first)  # settings changed
    stat = videos["fade"].stat()
    os.utime(videos["fade"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    assert index_videos([videos["fade"]], tmp_path, settings_).videos[0].pairs == first  # file changed


def test_data_folders_must_hold_data(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No videos were found.*data.videos"):
        list_files([str(tmp_path / "empty")], VIDEO_SUFFIXES, "videos", "data.videos")
    with pytest.raises(DataError, match="missing.*data.images.*does not exist"):
        list_files([str(tmp_path / "missing")], IMAGE_SUFFIXES, "images", "data.images")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a.mask.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "list.txt").write_text("a.png\nmissing.png\n")
    assert list_files([str(tmp_path / "list.txt")], IMAGE_SUFFIXES, "images", "data.images") == [tmp_path / "a.png"]
    assert list_files([str(tmp_path)], IMAGE_SUFFIXES, "images", "data.images") == [tmp_path / "a.png"]


# --- augmentation -----------------------------------------------------------------------------

GEOMETRY_ONLY = dataclasses.replace(DEFAULTS.augment.image, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 62), top=st.integers(0, 60), left=st.integers(0, 60), side=st.integers(12, 60))
def test_augmentation_moves_the_mask_with_the_image(seed, top, left, side):
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[top:top + side, left:left + side] = 1
    image = np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)
    out_image, out_mask = Augmenter(GEOMETRY_ONLY, 128)(image, mask, seed)
    from_image, from_mask = out_image.mean(axis=2) > 127, out_mask > 0
    union, overlap = (from_image | from_mask).sum(), (from_image & from_mask).sum()
    # resampling softens a border about a pixel wide, so pixels may disagree along the outline (about
    # the square root of the area) but not across it: a shift of a few pixels breaks this bound
    assert union - overlap <= max(0.15 * union, 2.5 * union ** 0.5 + 4)


def test_augmentation_is_reproducible_from_its_seed_and_transforms_strongly():
    image = textured_image(np.random.default_rng(5), 128, 128)
    augment = Augmenter(DEFAULTS.augment.image, 128)
    first, _ = augment(image, None, 11)
    assert np.array_equal(first, augment(image, None, 11)[0])
    changes = [np.abs(augment(image, None, seed)[0].astype(int) - image).mean() for seed in range(6)]
    assert min(changes) > 5 and len({round(c, 3) for c in changes}) == 6
    before = torch.random.get_rng_state()
    augment(image, None, 3)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's RNG is left alone


# --- samples ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_config(videos, tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(6)
    for k in range(2):
        cv2.imwrite(str(root / f"photo{k}.png"), textured_image(rng, 100, 80))
    labels = np.zeros((100, 80), dtype=np.uint8)
    labels[:, :40] = 1
    cv2.imwrite(str(root / "photo0.mask.png"), labels)
    return load_config(overrides=[
        f"data.images=[{root}]", "data.resolution=64", "model.checkpoint=unused", "model.vae=unused",
        "model.depth_model=unused"])


def make_dataset(config, videos):
    settings_ = PairSettings(0.4, 0.85, 12, 64)
    index = index_videos([videos["fade"]], videos["fade"].parent / "cache", settings_)
    return PairDataset(config, index.videos, list_files(config.data.images, IMAGE_SUFFIXES, "images", "data.images"))


def test_sample_decisions_follow_the_configured_mix_and_dropouts(sample_config, videos):
    dataset = make_dataset(sample_config, videos)
    plans = [dataset.plan(index) for index in range(4000)]
    assert abs(np.mean([p.kind == "video" for p in plans]) - 0.7) < 0.03
    assert abs(np.mean([p.keep_reference for p in plans]) - 0.9) < 0.02
    assert abs(np.mean([p.keep_depth for p in plans]) - 0.5) < 0.03
    assert dataset.plan(17) == dataset.plan(17)


def test_samples_are_built_as_inference_feeds_the_networks(sample_config, videos):
    dataset = make_dataset(sample_config, videos)
    seen = set()
    for index in range(40):
        plan = dataset.plan(index)
        key = (plan.kind, plan.keep_reference, plan.keep_depth)
        if key in seen:
            continue
        seen.add(key)
        sample = dataset[index]
        masked = sample["mask"][0] > 0
        assert masked.any() and sample["mask"].shape == (1, 64, 64)
        assert (sample["collage"][:, masked] == -1).all()  # black, as the authors' collage
        assert torch.equal(sample["collage"][:, ~masked], sample["source"][:, ~masked])
        assert bool(sample["clip_pixels"].abs().sum() == 0) != plan.keep_reference
        assert bool(sample["depth_pixels"].abs().sum() == 0) != plan.keep_depth
        assert sample["depth_pixels"].shape == (3, 518, 518) and sample["clip_pixels"].shape == (3, 224, 224)
        assert bool(sample["keep_reference"]) == plan.keep_reference
    assert {kind for kind, _, _ in seen} == {"video", "image"}
    again = dataset[3]
    assert all(torch.equal(again[key], dataset[3][key]) for key in again)


def test_an_image_with_a_segment_map_can_be_masked_by_its_segment(sample_config, videos):
    identity = dataclasses.replace(GEOMETRY_ONLY, rotation_probability=0.0, crop_scale_min=1.0, crop_scale_max=1.0,
                                   flip_probability=0.0, perspective_probability=0.0)
    config = dataclasses.replace(sample_config, data=dataclasses.replace(sample_config.data, segment_probability=1.0,
                                                                          video_fraction=0.0),
                                 augment=dataclasses.replace(sample_config.augment, image=identity))
    dataset = PairDataset(config, [], [p for p in list_files(config.data.images, IMAGE_SUFFIXES, "i", "k")
                                       if p.name == "photo0.png"])
    mask = dataset[0]["mask"][0].numpy()
    # the 100x80 image is padded to 100x100 (10 white columns each side), the segment is its left half
    expected = np.zeros((100, 100), dtype=np.uint8)
    expected[:, 10:50] = 1
    expected = cv2.resize(expected, (64, 64), interpolation=cv2.INTER_NEAREST)
    assert (mask == expected).mean() > 0.98


def test_step_batches_cover_each_step_once_across_processes_and_resume_where_they_left():
    def indices(start, rank, world, accumulation, batch, steps):
        batches = iter(StepBatches(start, batch, accumulation, rank, world))
        return [index for _ in range(steps * accumulation) for index in next(batches)]

    total = indices(0, 0, 1, 1, 12, 3)
    split = sorted(indices(0, 0, 2, 3, 2, 3) + indices(0, 1, 2, 3, 2, 3))
    assert total == split == list(range(36))
    assert indices(2, 1, 2, 3, 2, 1) == [i for i in indices(0, 1, 2, 3, 2, 3)[12:]]
