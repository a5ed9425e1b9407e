"""The built-in demo model: a tiny MimicBrush trained on synthetic patterned objects.

It is *not* MimicBrush's released model. It is a few megabytes, was trained in minutes on a CPU
by this project's own trainer (``tools/build_demo_model.py`` rebuilds it from scratch), and it
imitates one thing: the colours and patterns of a toy object in a reference, onto the masked
object of a source, at 128x128. On photographs its output is meaningless. It exists so that a
fresh install can run an edit without the real weights (about 10 GB) and so that the tests can
check that imitation happens. See ``MODEL_CARD.md`` beside this file.

Use it as any other set of model files::

    files = demo_model_files()
    models = load_models(files.checkpoint, files.vae, files.depth_model)
    pipeline = MimicBrushPipeline(models, working_size=DEMO_WORKING_SIZE)
    pipeline.edit(source, mask, reference, steps=DEMO_STEPS, guidance=DEMO_GUIDANCE, ...)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFileError
from ..model_files import WHERE_TO_DOWNLOAD, ModelFiles

DEMO_DIR = Path(__file__).resolve().parent
MODEL_DIR = DEMO_DIR / "model"
EXAMPLES_DIR = DEMO_DIR / "examples"
MODEL_CARD = DEMO_DIR / "MODEL_CARD.md"

CHECKPOINT_NAME = "mimicbrush_demo.safetensors"
VAE_FOLDER = "vae"
DEPTH_FOLDER = "depth_model"

DEMO_WORKING_SIZE = 128
"""The side of the square the demo model was trained at; edit at this working size."""

DEMO_STEPS = 25
"""DDIM steps the demo model is checked with (the imitation test); the authors' 50 give the same
kind of result, twice as slowly."""

DEMO_GUIDANCE = 3.0
"""Classifier-free guidance the demo model is used and checked with. Not the authors' 5: the
scale is a per-model setting, and this model's fills oversaturate above 3 (on 16 held-out pairs
the masked-region error with the right reference was 0.053 at 2, 0.058 at 3, 0.069 at 5 and
0.093 at 10)."""

DEMO_NOTICE = (
    "Using the built-in DEMO model: a tiny MimicBrush trained on synthetic patterned shapes at "
    f"{DEMO_WORKING_SIZE}x{DEMO_WORKING_SIZE}, not the real MimicBrush. It only shows the edit working "
    "(its results on photographs are meaningless). For real edits download the real weights: "
    f"{WHERE_TO_DOWNLOAD['checkpoint']}; {WHERE_TO_DOWNLOAD['vae']}; {WHERE_TO_DOWNLOAD['depth']}."
)
"""What a caller should tell the user whenever the demo model is used."""


@dataclass(frozen=True)
class DemoExample:
    """Paths of the shipped example inputs (PNG): source (RGB), mask (L, 255 = edit), reference (RGB)."""

    source: Path
    mask: Path
    reference: Path


def _require(path: Path) -> Path:
    if not path.exists():
        raise ModelFileError(
            f"The built-in demo model file '{path}' is missing (an incomplete copy of this package?). "
            "Reinstall the package, or rebuild the demo model with 'python tools/build_demo_model.py'.")
    return path


def demo_model_files() -> ModelFiles:
    """The shipped demo model's files, ready for :func:`mimic_core.models.load_models`: the
    self-describing checkpoint, the VAE folder and the Depth Anything folder. Raises
    :class:`~mimic_core.errors.ModelFileError` if any of them is missing."""
    return ModelFiles(
        checkpoint=_require(MODEL_DIR / CHECKPOINT_NAME),
        vae=_require(MODEL_DIR / VAE_FOLDER),
        depth_model=_require(MODEL_DIR / DEPTH_FOLDER),
    )


def is_demo_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is the shipped demo checkpoint (to tell the user so wherever it is used)."""
    return Path(path).resolve() == (MODEL_DIR / CHECKPOINT_NAME).resolve()


def demo_example() -> DemoExample:
    """The shipped example inputs the demo model suits (the README's and the demo workflow's)."""
    return DemoExample(*(_require(EXAMPLES_DIR / f"{name}.png") for name in ("source", "mask", "reference")))
