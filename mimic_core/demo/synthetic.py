"""A synthetic imitation task: patterned objects seen in two views.

Each *scene* is one object on a plain light background. The object has a random silhouette
(ellipse, rectangle or convex polygon) and a random two-colour pattern (stripes, checker, dots or
rings; a base colour and a pattern colour, two of eight vivid colours), drawn on a canonical
square canvas. A *view* places that canvas in the image with a homography (position, scale,
rotation, perspective) and recolours the image slightly (a per-channel gain and offset). Pattern
periods are 18-34 canvas pixels, 12-36 pixels of a 128-pixel view: 1.5-4.5 latent pixels of the
demo model's VAE, which downsamples by 8, so that it can represent them at all.

A held-out *pair* (:func:`make_pair`) is two independent views of one scene: the source, with a
mask over its whole object (the silhouette dilated by two pixels, so that no edge pixel outside
the mask gives the colours away), and the reference. Nothing visible in the masked source tells
the object's colours or pattern: only the reference does, which is what makes the pair a test of
imitation rather than of inpainting.

Training images (:func:`training_image`) are single views with a label map of the same dilated
silhouette, in the trainer's image format (``NAME.png`` + ``NAME.mask.png``): the trainer makes the
second view itself by augmenting each copy independently (rotation, resized crop, flip,
perspective, slight colour jitter) and masks the source by the object's segment.

Everything is a pure function of an integer seed (numpy's ``default_rng``), so data, pairs and
examples regenerate bit for bit.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CANVAS = 96
"""Side of the canonical square the pattern and silhouette are drawn on, in pixels."""

PALETTE = ((220, 30, 40), (245, 130, 20), (240, 210, 30), (40, 165, 60), (30, 185, 210), (40, 70, 200),
           (130, 50, 180), (225, 60, 170))
"""Object colours: red, orange, yellow, green, cyan, blue, purple, magenta. A palette rather than
any colour: a VAE this small reproduces eight colours faithfully, not a continuum."""

SHAPES = ("ellipse", "rectangle", "polygon")
PATTERNS = ("stripes", "checker", "dots", "rings")
MASK_DILATION = 2
"""Pixels the mask extends beyond the silhouette (covers the blended edge of the object)."""

TEST_SEED_OFFSET = 1_000_000
"""Held-out pairs use seeds from here on; training images use seeds below it."""
EXAMPLE_SEED = TEST_SEED_OFFSET + 900_010
"""The held-out pair of the demo's example inputs, picked among a dozen for its large object and
clearly distinct colours."""
EXAMPLE_SIZE = 256


@dataclass(frozen=True)
class Scene:
    """One object: silhouette and pattern on the canonical canvas, and the background colour."""

    shape: str
    pattern: str
    base_colour: tuple[int, int, int]
    pattern_colour: tuple[int, int, int]
    background: tuple[int, int, int]
    silhouette: np.ndarray  # CANVAS x CANVAS float32 in 0..1 (antialiased)
    texture: np.ndarray  # CANVAS x CANVAS x 3 uint8 RGB


@dataclass(frozen=True)
class View:
    """Where the canvas lands in an image (a homography) and the view's slight recolouring."""

    homography: np.ndarray  # 3 x 3, canvas pixel -> image pixel
    gain: np.ndarray  # 3 per-channel multipliers
    offset: np.ndarray  # 3 per-channel additions (0..255 scale)


@dataclass(frozen=True)
class Pair:
    """A held-out test pair: ``source`` (whose masked region is the ground truth), ``mask`` (0/1
    uint8, the source object's dilated silhouette) and ``reference`` (another view of the object)."""

    source: np.ndarray
    mask: np.ndarray
    reference: np.ndarray
    scene: Scene


def _silhouette(rng: np.random.Generator, shape: str) -> np.ndarray:
    """An antialiased silhouette drawn at 4x and shrunk (area average)."""
    scale = 4
    big = np.zeros((CANVAS * scale, CANVAS * scale), dtype=np.uint8)
    centre = CANVAS * scale / 2
    if shape == "ellipse":
        axes = (int(rng.uniform(0.34, 0.48) * CANVAS * scale), int(rng.uniform(0.34, 0.48) * CANVAS * scale))
        cv2.ellipse(big, (int(centre), int(centre)), axes, 0, 0, 360, 255, -1)
    elif shape == "rectangle":
        half_w, half_h = rng.uniform(0.3, 0.47, 2) * CANVAS * scale
        cv2.rectangle(big, (int(centre - half_w), int(centre - half_h)), (int(centre + half_w), int(centre + half_h)),
                      255, -1)
    else:
        count = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radii = rng.uniform(0.36, 0.48, count) * CANVAS * scale
        points = np.stack([centre + radii * np.cos(angles), centre + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(big, [cv2.convexHull(points.astype(np.int32))], 255)
    small = cv2.resize(big, (CANVAS, CANVAS), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def _pattern(rng: np.random.Generator, pattern: str) -> np.ndarray:
    """CANVAS x CANVAS bool: where the pattern colour replaces the base colour."""
    v, u = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) + 0.5
    angle = rng.uniform(0, np.pi)
    along = u * np.cos(angle) + v * np.sin(angle)
    across = -u * np.sin(angle) + v * np.cos(angle)
    if pattern == "stripes":
        period = rng.uniform(20, 32)
        return ((along + rng.uniform(0, period)) % period) < rng.uniform(0.3, 0.5) * period
    if pattern == "checker":
        cell = rng.uniform(18, 28)
        return (np.floor(along / cell) + np.floor(across / cell)) % 2 == 1
    if pattern == "dots":
        spacing = rng.uniform(24, 34)
        radius = rng.uniform(0.25, 0.36) * spacing
        du = (along % spacing) - spacing / 2
        dv = (across % spacing) - spacing / 2
        return du ** 2 + dv ** 2 < radius ** 2
    period = rng.uniform(18, 28)
    distance = np.hypot(u - CANVAS / 2, v - CANVAS / 2)
    return (distance % period) < rng.uniform(0.35, 0.5) * period


def random_scene(rng: np.random.Generator) -> Scene:
    """A random object: silhouette, pattern and two different colours of :data:`PALETTE`."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    base, other = (PALETTE[int(index)] for index in rng.choice(len(PALETTE), 2, replace=False))
    red, green, blue = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.12), rng.uniform(0.86, 1.0))
    background = (int(round(red * 255)), int(round(green * 255)), int(round(blue * 255)))
    silhouette = _silhouette(rng, shape)
    where = _pattern(rng, pattern)
    texture = np.where(where[..., None], np.array(other, np.uint8), np.array(base, np.uint8)).astype(np.uint8)
    return Scene(shape, pattern, base, other, background, silhouette, texture)


def random_view(rng: np.random.Generator, size: int) -> View:
    """A placement of the canvas in a ``size`` image: the canvas side is 50-80% of the image,
    rotated by up to 25°, each corner moved by up to 10% of the side (perspective), the whole
    canvas kept inside the image (shrunk when it would not fit); a gain of 0.95-1.05 and an offset of +-5 per channel."""
    side = rng.uniform(0.5, 0.8) * size
    angle = np.deg2rad(rng.uniform(-25, 25))
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * side / 2
    corners += rng.uniform(-0.1, 0.1, corners.shape) * side
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = corners @ rotation.T
    corners *= min(1.0, (size - 4) / (corners.max(axis=0) - corners.min(axis=0)).max())
    centre = rng.uniform(-corners.min(axis=0) + 1, size - 1 - corners.max(axis=0))
    canvas_corners = np.array([[0, 0], [CANVAS, 0], [CANVAS, CANVAS], [0, CANVAS]], dtype=np.float32)
    homography = cv2.getPerspectiveTransform(canvas_corners, (corners + centre).astype(np.float32))
    return View(homography, rng.uniform(0.95, 1.05, 3), rng.uniform(-5, 5, 3))


def render(scene: Scene, view: View, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image, coverage)``: the ``size x size x 3`` uint8 RGB view and the object's coverage
    (``size x size`` float32, 0..1, antialiased)."""
    flags = cv2.INTER_LINEAR
    texture = cv2.warpPerspective(scene.texture, view.homography, (size, size), flags=flags,
                                  borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    coverage = cv2.warpPerspective(scene.silhouette, view.homography, (size, size), flags=flags,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = coverage[..., None]
    image = texture * alpha + np.array(scene.background, np.float32) * (1 - alpha)
    image = image * view.gain + view.offset
    return np.clip(np.round(image), 0, 255).astype(np.uint8), coverage


def object_mask(coverage: np.ndarray) -> np.ndarray:
    """0/1 uint8: every pixel the object touches, dilated by :data:`MASK_DILATION` pixels."""
    touched = (coverage > 0.01).astype(np.uint8)
    kernel = np.ones((2 * MASK_DILATION + 1, 2 * MASK_DILATION + 1), np.uint8)
    return cv2.dilate(touched, kernel)


def make_pair(seed: int, size: int = 128) -> Pair:
    """The held-out pair of ``seed`` (use seeds from :data:`TEST_SEED_OFFSET` on, which no
    training image uses): two independent views of one scene, the source's object masked."""
    rng = np.random.default_rng([seed, 1])
    scene = random_scene(rng)
    source, coverage = render(scene, random_view(rng, size), size)
    reference, _ = render(scene, random_view(rng, size), size)
    return Pair(source, object_mask(coverage), reference, scene)


def training_image(seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)`` of training image ``seed``: one view, and the object's dilated
    silhouette as label 1 on 0 (the segment the trainer masks)."""
    rng = np.random.default_rng([seed, 0])
    scene = random_scene(rng)
    image, coverage = render(scene, random_view(rng, size), size)
    return image, object_mask(coverage)


def write_training_images(folder: str | Path, count: int, size: int = 128, first_seed: int = 0) -> list[Path]:
    """Write ``count`` training images (seeds ``first_seed`` on) with their label maps, in the
    trainer's format; returns the image paths."""
    if first_seed + count > TEST_SEED_OFFSET:
        raise ValueError(f"training seeds must stay below {TEST_SEED_OFFSET} (the held-out pairs' seeds)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(first_seed, first_seed + count):
        image, labels = training_image(seed, size)
        path = folder / f"object_{seed:06d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / f"object_{seed:06d}.mask.png"), labels)
        paths.append(path)
    return paths
