"""Write each shipped UI workflow's template-browser thumbnail (``workflows/<name>.jpg``) from the
results the end-to-end tests' own run saved (``<artifacts>/<name>_result_<i>.png``, one per
SaveImage node, written by ``tests/e2e/test_browser_templates.py``).

    python tools/build_thumbnails.py .ci-work/artifacts

A thumbnail is a picture of what the workflow really made: the demo's on the built-in model, the
others' on the tiny random-weight test models (their masked region is noise by design).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
TILE = 384
"""Each result fits in a TILE x TILE box; several results of one workflow stand side by side."""
JPEG_QUALITY = 88


def thumbnail(results: list[Image.Image]) -> Image.Image:
    tiles = []
    for result in results:
        tile = result.convert("RGB")
        tile.thumbnail((TILE, TILE), Image.Resampling.LANCZOS)
        tiles.append(tile)
    sheet = Image.new("RGB", (sum(tile.width for tile in tiles), max(tile.height for tile in tiles)), "white")
    left = 0
    for tile in tiles:
        sheet.paste(tile, (left, (sheet.height - tile.height) // 2))
        left += tile.width
    return sheet


def result_files(artifacts: Path, name: str) -> list[Path]:
    return sorted(artifacts.glob(f"{name}_result_*.png"))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    artifacts = Path(argv[0])
    missing = []
    for workflow in sorted(WORKFLOWS.glob("*.json")):
        files = result_files(artifacts, workflow.stem)
        if not files:
            missing.append(workflow.stem)
            continue
        results = []
        for path in files:
            with Image.open(path) as image:
                results.append(image.copy())
        thumbnail(results).save(workflow.with_suffix(".jpg"), quality=JPEG_QUALITY)
    if missing:
        print(f"no results in {artifacts} for: {', '.join(missing)} (run the end-to-end tests first)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
