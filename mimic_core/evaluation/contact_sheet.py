"""One picture per case for a person to look at: source | mask | reference | result.

Every panel is scaled to the same height (aspect kept) and labelled underneath; a title strip
names the case, its track and pairing. The mask panel is the binary mask (white = edited).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .benchmark import Case, CaseImages

GAP = 4
STRIP = 18
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
PANELS = ("source", "mask", "reference", "result")


def panel_width(width: int, height: int, panel_height: int) -> int:
    return max(1, round(width * panel_height / height))


def sheet_size(images: list[np.ndarray], panel_height: int) -> tuple[int, int]:
    """(width, height) of the sheet of these panels."""
    widths = [panel_width(image.shape[1], image.shape[0], panel_height) for image in images]
    return sum(widths) + GAP * (len(widths) + 1), panel_height + 2 * STRIP


def contact_sheet(case: Case, images: CaseImages, edited: np.ndarray, panel_height: int = 256) -> Image.Image:
    mask = np.repeat((images.source_mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    panels = [images.source, mask, images.reference, edited]
    sheet = Image.new("RGB", sheet_size(panels, panel_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((GAP, 3), f"{case.id}: {case.track.replace('_', ' ')}, {case.pairing.replace('_id', '-ID')}",
              fill=TEXT, font=font)
    left = GAP
    for label, panel in zip(PANELS, panels):
        width = panel_width(panel.shape[1], panel.shape[0], panel_height)
        resample = Image.Resampling.NEAREST if label == "mask" else Image.Resampling.LANCZOS
        sheet.paste(Image.fromarray(panel).resize((width, panel_height), resample), (left, STRIP))
        draw.text((left, STRIP + panel_height + 3), label, fill=TEXT, font=font)
        left += width + GAP
    return sheet


def write_contact_sheet(sheet: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
