"""The rules an edit's settings must follow, in one place for the engine, the nodes and the commands.

Each concern is a frozen dataclass that checks itself when made: :class:`SamplingOptions` (how
the model samples) and :class:`RegionOptions` (what part of the image it works on).
:meth:`MimicBrushPipeline.edit <mimic_core.pipeline.MimicBrushPipeline.edit>` makes both before
any work, and the commands make them from their options before any model loads, so a bad value
is refused in seconds with the same words everywhere. A refusal is an :class:`OptionError` that
knows which setting it is about, so each caller names it as its user knows it (``steps`` in
Python, ``--steps`` on the command line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Mapping

from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       UniPCMultistepScheduler)

from .errors import InputError

SAMPLERS = {
    "ddim": DDIMScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}
REGIONS = ("whole", "crop", "crop_each")
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0
TRAIN_TIMESTEPS = 1000
"""The model's noise schedule: no sampler can take more steps than it has timesteps."""
MAX_REFERENCE_STRENGTH = 2.0
MAX_SEED = 0xFFFFFFFFFFFFFFFF
"""ComfyUI's seed widget range (0 to 2**64 - 1), which torch's generator takes whole."""
WORKING_SIZES = range(64, 1024 + 1, 64)
QUALITY_PRESETS = {
    "exact": {"steps": DEFAULT_STEPS, "sampler": "ddim", "reference_every": 1, "guided_fraction": 1.0,
              "deep_features_every": 1},
    "balanced": {"steps": 12, "sampler": "dpmpp_2m", "reference_every": 0, "guided_fraction": 1.0,
                 "deep_features_every": 3},
    "fast": {"steps": 5, "sampler": "dpmpp_2m", "reference_every": 0, "guided_fraction": 1.0,
             "deep_features_every": 3},
}
"""Named settings of the sampling options that trade exactness for speed. exact: the authors'
sampling. balanced and fast: the fewer-step solver, the reference computed once and the deep
features reused, each setting chosen by ``bench/fast_mode_quality.py`` (the demo model's error)
and ``bench/speed.py`` (the cost at the released size); guidance stays on at every step, which
is what imitation pays for most when it is skipped."""


def describe_quality(name: str) -> str:
    """A preset in words, e.g. "dpmpp_2m 5 steps, reference once, deep features every 3"."""
    preset = QUALITY_PRESETS[name]
    words = [f"{preset['sampler']} {preset['steps']} steps"]
    if preset["reference_every"] != 1:
        words.append("reference once" if preset["reference_every"] == 0 else f"reference every {preset['reference_every']}")
    if preset["guided_fraction"] != 1:
        words.append(f"guided fraction {preset['guided_fraction']:g}")
    if preset["deep_features_every"] != 1:
        words.append(f"deep features every {preset['deep_features_every']}")
    return ", ".join(words)


class OptionError(InputError):
    """One setting cannot be used: ``option`` is its Python name, ``problem`` the rest of the sentence."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem

    def spelled(self, names: Mapping[str, str]) -> InputError:
        """The same refusal naming the setting as ``names`` spells it (e.g. a command's option)."""
        return InputError(f"{names.get(self.option, self.option)} {self.problem}")


def check_whole(option: str, value, low: int, meaning: str = "") -> None:
    """``value`` a whole number of at least ``low``; ``meaning`` explains the lowest value."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise OptionError(option, f"must be a whole number, got {value!r}.")
    if value < low:
        raise OptionError(option, f"must be at least {low}{meaning}, got {value}.")


def _number(option: str, value, wanted: str, low: float, high: float = math.inf) -> None:
    """``value`` a finite number in ``[low, high]``; ``wanted`` says so in words (and what it means)."""
    if (isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value)
            or not low <= value <= high):
        raise OptionError(option, f"must be a finite number {wanted}, got {value!r}.")


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise OptionError("sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}.")


@dataclass(frozen=True)
class SamplingOptions:
    """How an edit samples. The defaults of :meth:`MimicBrushPipeline.edit` are the authors' sampling."""

    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int = 0
    num_samples: int = 1
    working_size: int | None = None
    """The side of the square the model works at; None: the pipeline's (512 for the released model)."""
    sampler: str = "ddim"
    reference_every: int = 1
    guided_fraction: float = 1.0
    deep_features_every: int = 1
    reference_strength: float = 1.0
    """How much reference attention weighs: log(strength) is added to the attention logits of the
    reference keys. 1 is the model's own attention; 0 leaves the reference tokens out (the
    reference's CLIP embedding still conditions the edit)."""
    denoise: float = 1.0
    """As ComfyUI's KSampler: the last ``steps`` of a ``steps / denoise``-step schedule, starting from
    the source's latents noised to that level. 1 samples from pure noise."""

    def __post_init__(self):
        check_whole("steps", self.steps, 1)
        if self.steps > TRAIN_TIMESTEPS:
            raise OptionError("steps", f"must be at most {TRAIN_TIMESTEPS} (the model's noise schedule), "
                                       f"got {self.steps}.")
        _number("guidance", self.guidance, "of 0 or more (5 is the authors'; any value up to 1 turns classifier-free "
                                           "guidance off: the conditional branch alone, at half the cost)", 0.0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, Integral) or not 0 <= self.seed <= MAX_SEED:
            raise OptionError("seed", f"must be a whole number from 0 to {MAX_SEED} (ComfyUI's seed range), "
                                      f"got {self.seed!r}.")
        check_whole("num_samples", self.num_samples, 1)
        if self.working_size is not None and (isinstance(self.working_size, bool)
                                              or self.working_size not in WORKING_SIZES):
            raise OptionError("working_size", f"must be a multiple of 64 from {WORKING_SIZES[0]} to "
                                              f"{WORKING_SIZES[-1]}, got {self.working_size!r}.")
        check_sampler(self.sampler)
        check_whole("reference_every", self.reference_every, 0, " (0: reference features computed once)")
        _number("guided_fraction", self.guided_fraction, "from 0 to 1 (the share of the steps with guidance)", 0.0, 1.0)
        check_whole("deep_features_every", self.deep_features_every, 1, " (1: the whole U-Net at every step)")
        _number("reference_strength", self.reference_strength, f"from 0 to {MAX_REFERENCE_STRENGTH:g} (1: the "
                "model's own reference attention; 0: the reference tokens take no part)", 0.0, MAX_REFERENCE_STRENGTH)
        _number("denoise", self.denoise, "above 0 and at most 1 (1: from pure noise; less keeps more of the "
                "source's layout inside the mask)", 0.0, 1.0)
        if self.denoise == 0:
            raise OptionError("denoise", "must be above 0 (0 would leave the source as it is), got 0.")
        if self.schedule_steps > TRAIN_TIMESTEPS:
            raise OptionError("denoise", f"{self.denoise:g} with {self.steps} steps asks for a schedule of "
                                         f"{self.schedule_steps} steps, more than the model's {TRAIN_TIMESTEPS}: raise "
                                         f"denoise to at least {self.steps / TRAIN_TIMESTEPS:g} or take fewer steps.")

    @classmethod
    def with_quality(cls, quality: str, **settings) -> SamplingOptions:
        """The options of the named :data:`QUALITY_PRESETS` entry, ``settings`` given overriding it."""
        if quality not in QUALITY_PRESETS:
            raise OptionError("quality", f"must be one of {', '.join(QUALITY_PRESETS)}, got {quality!r}.")
        return cls(**{**QUALITY_PRESETS[quality], **settings})

    @property
    def schedule_steps(self) -> int:
        """The length of the schedule whose last ``steps`` are run (ComfyUI's ``int(steps / denoise)``)."""
        return self.steps if self.denoise >= 1 else int(self.steps / self.denoise)


@dataclass(frozen=True)
class RegionOptions:
    """What an edit works on: the whole padded image, or crops ``context`` times the mask's extent
    and at least ``min_side`` source pixels a side."""

    region: str = "whole"
    context: float = 2.0
    min_side: int = 256

    def __post_init__(self):
        if self.region not in REGIONS:
            raise OptionError("region", f"must be one of {', '.join(REGIONS)}, got {self.region!r}.")
        _number("context", self.context, "of 1 or more (the crop's side in multiples of the mask's extent)", 1.0)
        check_whole("min_side", self.min_side, 1)
