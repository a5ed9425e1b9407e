"""The training configuration: the defaults of ``default_config.yaml``, a user's file and ``--set``
overrides on top, checked key by key into frozen dataclasses.

The YAML file is the one place defaults live (with their documentation and the paper's values), so
the dataclasses below declare types only. Every unknown key and every unusable value is reported
with its full dotted name and what would fix it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ..errors import InputError

TRAINABLE_PARTS = ("unet", "referencenet", "image_encoder", "image_proj", "depth_guider")
LORA_PARTS = ("unet", "referencenet", "image_encoder")
MIXED_PRECISION = ("no", "fp16", "bf16")
TIMESTEP_SAMPLING = ("uniform", "cubic")
NOISE_OFFSET_REGIONS = ("image", "mask")
INITS = ("mimicbrush", "sd15")


class ConfigError(InputError):
    """A training configuration key is unknown or its value cannot be used."""


@dataclass(frozen=True)
class DataConfig:
    videos: list[str]
    images: list[str]
    video_fraction: float
    resolution: int
    ssim_min: float
    ssim_max: float
    frames_per_video: int
    ssim_size: int
    pair_cache: str | None
    segment_probability: float
    num_workers: int

    def check(self) -> None:
        _probability(self.video_fraction, "data.video_fraction")
        _probability(self.segment_probability, "data.segment_probability")
        _require(self.resolution % 64 == 0 and 64 <= self.resolution <= 2048, "data.resolution",
                 f"must be a multiple of 64 from 64 to 2048, got {self.resolution}")
        _require(0.0 <= self.ssim_min < self.ssim_max <= 1.0, "data.ssim_min/data.ssim_max",
                 f"need 0 <= ssim_min < ssim_max <= 1, got {self.ssim_min} and {self.ssim_max}")
        _require(self.frames_per_video >= 2, "data.frames_per_video", f"must be at least 2, got {self.frames_per_video}")
        _require(self.ssim_size >= 32, "data.ssim_size", f"must be at least 32 pixels, got {self.ssim_size}")
        _require(self.num_workers >= 0, "data.num_workers", f"must be 0 or more, got {self.num_workers}")
        if not self.videos and not self.images:
            raise ConfigError("Config keys 'data.videos' and 'data.images' are both empty: give at least one folder "
                              "(or .txt list) of videos or images.")


@dataclass(frozen=True)
class AugmentStrength:
    brightness: float
    contrast: float
    saturation: float
    hue: float
    jitter_probability: float
    rotation_degrees: float
    rotation_probability: float
    crop_scale_min: float
    crop_scale_max: float
    flip_probability: float
    perspective: float
    perspective_probability: float

    def check(self, prefix: str) -> None:
        for name in ("jitter_probability", "rotation_probability", "flip_probability", "perspective_probability"):
            _probability(getattr(self, name), f"{prefix}.{name}")
        for name in ("brightness", "contrast", "saturation"):
            _require(0.0 <= getattr(self, name) <= 1.0, f"{prefix}.{name}", f"must be in [0, 1], got {getattr(self, name)}")
        _require(0.0 <= self.hue <= 0.5, f"{prefix}.hue", f"must be in [0, 0.5], got {self.hue}")
        _require(0.0 <= self.rotation_degrees <= 180.0, f"{prefix}.rotation_degrees",
                 f"must be in [0, 180], got {self.rotation_degrees}")
        _require(0.0 < self.crop_scale_min <= self.crop_scale_max <= 1.0, f"{prefix}.crop_scale_min/crop_scale_max",
                 f"need 0 < crop_scale_min <= crop_scale_max <= 1, got {self.crop_scale_min} and {self.crop_scale_max}")
        _require(0.0 <= self.perspective <= 1.0, f"{prefix}.perspective", f"must be in [0, 1], got {self.perspective}")


@dataclass(frozen=True)
class AugmentConfig:
    video: AugmentStrength
    image: AugmentStrength

    def check(self) -> None:
        self.video.check("augment.video")
        self.image.check("augment.image")


@dataclass(frozen=True)
class MaskingConfig:
    grid_min: int
    grid_max: int
    matched_probability: float
    unmatched_probability: float
    sift_ratio: float

    def check(self) -> None:
        _require(1 <= self.grid_min <= self.grid_max <= 64, "masking.grid_min/masking.grid_max",
                 f"need 1 <= grid_min <= grid_max <= 64, got {self.grid_min} and {self.grid_max}")
        _probability(self.matched_probability, "masking.matched_probability")
        _probability(self.unmatched_probability, "masking.unmatched_probability")
        _require(0.0 < self.sift_ratio <= 1.0, "masking.sift_ratio", f"must be in (0, 1], got {self.sift_ratio}")


@dataclass(frozen=True)
class ConditioningConfig:
    depth_drop: float
    reference_drop: float

    def check(self) -> None:
        _probability(self.depth_drop, "conditioning.depth_drop")
        _probability(self.reference_drop, "conditioning.reference_drop")


@dataclass(frozen=True)
class ModelConfig:
    init: str
    checkpoint: str | None
    config_dir: str | None
    sd15_inpainting: str | None
    sd15: str | None
    image_encoder: str | None
    vae: str | None
    depth_model: str | None

    def check(self) -> None:
        _require(self.init in INITS, "model.init", f"must be one of {', '.join(INITS)}, got '{self.init}'")
        needed = ["depth_model"]
        if self.init == "mimicbrush":
            needed += ["checkpoint", "vae"]
        else:
            needed += ["sd15_inpainting", "sd15", "image_encoder"]
        for name in needed:
            _require(getattr(self, name) is not None, f"model.{name}", f"is needed with model.init '{self.init}'; "
                     "give the path in the config file or with --set model." + name + "=PATH")


@dataclass(frozen=True)
class PartsConfig:
    unet: bool
    referencenet: bool
    image_encoder: bool
    image_proj: bool
    depth_guider: bool


@dataclass(frozen=True)
class TrainConfig:
    parts: PartsConfig
    learning_rate: float
    timestep_sampling: str
    noise_offset: float
    noise_offset_region: str
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    weight_decay: float
    max_grad_norm: float
    total_batch_size: int
    batch_size_per_device: int
    max_steps: int
    seed: int
    mixed_precision: str
    gradient_checkpointing: bool
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int

    def check(self) -> None:
        _require(self.learning_rate > 0, "train.learning_rate", f"must be positive, got {self.learning_rate}")
        _require(self.timestep_sampling in TIMESTEP_SAMPLING, "train.timestep_sampling",
                 f"must be one of {', '.join(TIMESTEP_SAMPLING)}, got '{self.timestep_sampling}'")
        _require(self.noise_offset >= 0, "train.noise_offset", f"must be 0 (off) or more, got {self.noise_offset}")
        _require(self.noise_offset_region in NOISE_OFFSET_REGIONS, "train.noise_offset_region",
                 f"must be one of {', '.join(NOISE_OFFSET_REGIONS)}, got '{self.noise_offset_region}'")
        for name in ("adam_beta1", "adam_beta2"):
            _require(0.0 <= getattr(self, name) < 1.0, f"train.{name}", f"must be in [0, 1), got {getattr(self, name)}")
        _require(self.adam_epsilon > 0, "train.adam_epsilon", f"must be positive, got {self.adam_epsilon}")
        _require(self.weight_decay >= 0, "train.weight_decay", f"must be 0 or more, got {self.weight_decay}")
        _require(self.max_grad_norm >= 0, "train.max_grad_norm", f"must be 0 (off) or more, got {self.max_grad_norm}")
        for name in ("total_batch_size", "batch_size_per_device", "max_steps", "checkpoint_every",
                     "keep_checkpoints", "log_every"):
            _require(getattr(self, name) >= 1, f"train.{name}", f"must be at least 1, got {getattr(self, name)}")
        _require(self.total_batch_size % self.batch_size_per_device == 0, "train.total_batch_size",
                 f"({self.total_batch_size}) must be a multiple of train.batch_size_per_device "
                 f"({self.batch_size_per_device})")
        _require(self.mixed_precision in MIXED_PRECISION, "train.mixed_precision",
                 f"must be one of {', '.join(MIXED_PRECISION)}, got '{self.mixed_precision}'")
        _require(any(dataclasses.astuple(self.parts)), "train.parts", "turn at least one part on: nothing would train")


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool
    rank: int
    alpha: float
    parts: list[str]
    target_modules: list[str]

    def check(self) -> None:
        _require(self.rank >= 1, "lora.rank", f"must be at least 1, got {self.rank}")
        _require(self.alpha > 0, "lora.alpha", f"must be positive, got {self.alpha}")
        unknown = [part for part in self.parts if part not in LORA_PARTS]
        _require(not unknown, "lora.parts", f"may name {', '.join(LORA_PARTS)}, got {unknown}")
        _require(bool(self.target_modules), "lora.target_modules", "must name at least one module (e.g. to_q)")
        _require(not self.enabled or bool(self.parts), "lora.parts", "is empty while lora.enabled is true")


@dataclass(frozen=True)
class TrainingConfig:
    data: DataConfig
    augment: AugmentConfig
    masking: MaskingConfig
    conditioning: ConditioningConfig
    model: ModelConfig
    train: TrainConfig
    lora: LoraConfig

    def check(self) -> None:
        for section in (self.data, self.augment, self.masking, self.conditioning, self.model, self.train, self.lora):
            section.check()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PATH_KEYS = {
    "data": ("videos", "images", "pair_cache"),
    "model": ("checkpoint", "config_dir", "sd15_inpainting", "sd15", "image_encoder", "vae", "depth_model"),
}


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"Config key '{key}' {message}.")


def _probability(value: float, key: str) -> None:
    _require(0.0 <= value <= 1.0, key, f"is a probability and must be in [0, 1], got {value}")


def default_config_text() -> str:
    """The default configuration file, comments included."""
    return resources.files(__package__).joinpath("default_config.yaml").read_text()


def _read_mapping(text: str, source: str) -> dict:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML/JSON: {err}") from err
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source} must hold a mapping of sections (data:, train:, ...), not {type(value).__name__}.")
    return value


def parse_override(item: str) -> dict:
    """``section.key=value`` (value in YAML: ``3``, ``1e-4``, ``true``, ``[a, b]``) as a nested dict."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set '{item}' is not KEY=VALUE (e.g. --set train.max_steps=1000).")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set '{item}': the value is not valid YAML ({err}).") from err
    nested: dict = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _convert(hint, value, key: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"Config key '{key}' must be a list, got {value!r}.")
        return [_convert(args[0], item, f"{key}[{index}]") for index, item in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(arg for arg in args if arg is not type(None)), value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"Config key '{key}' must be true or false, got {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"Config key '{key}' must be a whole number, got {value!r}.")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 1e-5 (no dot) as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"Config key '{key}' must be a number, got {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"Config key '{key}' must be text, got {value!r}.")
        return value
    raise TypeError(f"unsupported config type {hint!r}")


def _build(cls, value, prefix: str):
    """``cls`` from a mapping, refusing unknown and missing keys with their dotted names."""
    if not isinstance(value, dict):
        raise ConfigError(f"Config key '{prefix}' must be a mapping of keys, got {value!r}.")
    hints = typing.get_type_hints(cls)
    known = [field.name for field in dataclasses.fields(cls)]
    for key in value:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            section = f"'{prefix}'" if prefix else "the top level"
            raise ConfigError(f"Unknown config key '{where}': {hint}the keys of {section} are {', '.join(known)} "
                              "(python -m mimic_core train --print-config shows them all).")
    missing = [name for name in known if name not in value]
    if missing:
        raise ConfigError(f"Config section '{prefix or 'top level'}' lacks {', '.join(missing)}.")
    return cls(**{name: _convert(hints[name], value[name], f"{prefix}.{name}" if prefix else name) for name in known})


def _absolute_paths(raw: dict) -> dict:
    """Relative paths are relative to the directory the command runs in; stored absolute, so a
    resumed run finds the same files from anywhere."""
    raw = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for section, keys in PATH_KEYS.items():
        values = raw.get(section)
        if not isinstance(values, dict):
            continue
        for key in keys:
            value = values.get(key)
            if isinstance(value, str):
                values[key] = os.path.abspath(os.path.expanduser(value))
            elif isinstance(value, list):
                values[key] = [os.path.abspath(os.path.expanduser(v)) if isinstance(v, str) else v for v in value]
    return raw


def build_config(raw: dict) -> TrainingConfig:
    """Check a complete configuration mapping (defaults already merged in)."""
    config = _build(TrainingConfig, _absolute_paths(raw), "")
    config.check()
    return config


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                base: dict | None = None) -> TrainingConfig:
    """Defaults, then ``base`` (a stored run's config) or the file at ``path``, then ``--set`` overrides."""
    raw = _read_mapping(default_config_text(), "The default configuration")
    if base is not None:
        raw = _merge(raw, base)
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"Cannot read the config file '{path}': {err}") from err
        raw = _merge(raw, _read_mapping(text, f"The config file '{path}'"))
    for item in overrides:
        raw = _merge(raw, parse_override(item))
    return build_config(raw)


def config_yaml(config: TrainingConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
