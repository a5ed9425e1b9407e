"""The quality presets: named settings of the sampling options, in the engine and on the command line."""

from __future__ import annotations

import dataclasses

import pytest

from mimic_core.cli import build_parser
from mimic_core.command_options import sampling_options
from mimic_core.edit_options import QUALITY_PRESETS, OptionError, SamplingOptions, describe_quality
from mimic_core.errors import InputError

PRESET_FIELDS = {"steps", "sampler", "reference_every", "guided_fraction", "deep_features_every"}


def _edit_args(*options: str):
    return build_parser().parse_args(["edit", "--source", "s.png", "--mask", "m.png", "--reference", "r.png",
                                      "--out", "o.png", *options])


def test_exact_is_the_authors_sampling_and_every_preset_sets_the_same_options():
    assert SamplingOptions.with_quality("exact") == SamplingOptions()
    for name, preset in QUALITY_PRESETS.items():
        assert set(preset) == PRESET_FIELDS, name
        options = SamplingOptions.with_quality(name, seed=3, guidance=4.0)
        assert {field: getattr(options, field) for field in PRESET_FIELDS} == preset
        assert (options.seed, options.guidance) == (3, 4.0)
    assert QUALITY_PRESETS["fast"]["steps"] < QUALITY_PRESETS["balanced"]["steps"] < QUALITY_PRESETS["exact"]["steps"]


def test_a_setting_given_beside_a_preset_wins():
    options = SamplingOptions.with_quality("fast", steps=12, deep_features_every=1)
    assert (options.steps, options.deep_features_every) == (12, 1)
    assert options.sampler == QUALITY_PRESETS["fast"]["sampler"]


def test_an_unknown_preset_is_refused_by_name():
    with pytest.raises(OptionError, match="quality must be one of exact, balanced, fast, got 'turbo'"):
        SamplingOptions.with_quality("turbo")


def test_the_description_names_the_solver_and_the_steps():
    assert describe_quality("exact") == "ddim 50 steps"
    fast = QUALITY_PRESETS["fast"]
    assert describe_quality("fast").startswith(f"{fast['sampler']} {fast['steps']} steps, reference once")


@pytest.mark.parametrize("quality", list(QUALITY_PRESETS))
def test_the_command_line_applies_the_preset(quality):
    options = sampling_options(_edit_args("--quality", quality, "--seed", "7"), 25, 5.0, 512)
    assert options == dataclasses.replace(SamplingOptions.with_quality(quality), seed=7, working_size=512)


def test_on_the_command_line_an_option_given_beside_the_preset_wins_and_the_rest_are_the_preset_s():
    options = sampling_options(_edit_args("--quality", "fast", "--steps", "14", "--guided-fraction", "0.5"),
                               25, 5.0, 512)
    assert (options.steps, options.guided_fraction) == (14, 0.5)
    assert options.deep_features_every == QUALITY_PRESETS["fast"]["deep_features_every"]


def test_without_a_preset_the_command_line_keeps_its_defaults():
    options = sampling_options(_edit_args(), 25, 3.0, 128)
    assert options == SamplingOptions(steps=25, guidance=3.0, working_size=128)


def test_a_bad_option_beside_a_preset_is_named_as_the_command_spells_it():
    with pytest.raises(InputError, match="--deep-features-every must be at least 1"):
        sampling_options(_edit_args("--quality", "fast", "--deep-features-every", "0"), 25, 5.0, 512)



def test_the_sampler_node_offers_every_preset_after_custom():
    """The node names the presets itself (loading the pack imports no diffusers); read from its
    source, as importing it needs ComfyUI."""
    import ast

    from tests.support import REPO

    tree = ast.parse((REPO / "nodes" / "sampler_nodes.py").read_text())
    choices = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", None) == "QUALITY_CHOICES")
    assert choices[0].startswith("custom") and tuple(choices[1:]) == tuple(QUALITY_PRESETS)
