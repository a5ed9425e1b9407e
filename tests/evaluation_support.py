"""Builders for the evaluation tests: tiny random CLIP and DINOv2 folders, and a synthetic benchmark."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_tiny_clip(folder: Path) -> Path:
    """A random ``CLIPModel`` with its processor, saved as a transformers folder (32 px images).

    The tokenizer's vocabulary holds single characters only (no merges): enough for texts of
    lowercase words, which is all the tests write.
    """
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    characters = string.ascii_lowercase + string.digits + ".,!?'-"
    vocab = {token: index for index, token in enumerate(
        [*characters, *(c + "</w>" for c in characters), "<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_tiny_dino(folder: Path) -> Path:
    """A random ``Dinov2Model`` with DINOv2's image processor at 56 px, saved as a transformers folder."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=56, patch_size=14)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}, resample=3,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB picture with structure at several scales (gradients and blobs), no flat areas."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        value = rng.uniform(0.2, 0.5) + 0.3 * np.sin(xs * rng.uniform(4, 12) + rng.uniform(0, 6)) \
            * np.cos(ys * rng.uniform(4, 12)) + rng.normal(0, 0.03, (height, width))
        channels.append(value)
    return (np.clip(np.stack(channels, axis=-1), 0, 1) * 255).astype(np.uint8)


def rectangle_mask(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[top:bottom, left:right] = 255
    return mask


def save(array: np.ndarray, benchmark: Path, name: str) -> str:
    """Write ``images/<name>`` in the benchmark folder; returns that relative path for the manifest."""
    (benchmark / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(benchmark / "images" / name)
    return f"images/{name}"


SYNTHETIC_CASES = ("pc-inter", "pc-inner", "tt-inter", "tt-inner")


def write_synthetic_benchmark(folder: Path) -> Path:
    """Four cases, one per track and pairing; two cases share a reference, one has no reference
    mask, and the inter-ID cases have texts."""
    shoe = save(smooth_image(80, 64, 10), folder, "shoe_reference.png")
    shoe_mask = save(rectangle_mask(80, 64, 10, 8, 60, 50), folder, "shoe_reference_mask.png")
    same = save(smooth_image(72, 72, 11), folder, "same_reference.png")
    mug = save(smooth_image(64, 96, 12), folder, "mug_reference.png")
    cases = []
    for number, (case_id, track, pairing) in enumerate((
            ("pc-inter", "part_composition", "inter_id"), ("pc-inner", "part_composition", "inner_id"),
            ("tt-inter", "texture_transfer", "inter_id"), ("tt-inner", "texture_transfer", "inner_id"))):
        case = {"id": case_id, "track": track, "pairing": pairing,
                "source": save(smooth_image(96, 128, number), folder, f"{case_id}_source.png"),
                "source_mask": save(rectangle_mask(96, 128, 20 + number, 30, 70, 100 - number),
                                    folder, f"{case_id}_mask.png")}
        if pairing == "inner_id":
            case["reference"] = same
        elif track == "part_composition":
            case.update(reference=shoe, reference_mask=shoe_mask, text="a sneaker with a red sole",
                        category="product")
        else:
            case.update(reference=mug, text="a knitted mug")
        cases.append(case)
    (folder / "manifest.json").write_text(json.dumps({"name": "synthetic", "cases": cases}, indent=2))
    return folder
