"""The blank input's embedding carried by a converted checkpoint: written at conversion, used while
the weights it came from are loaded unchanged, computed otherwise, refused when altered."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mimic_core.blank_embedding import STORED_KEY, compute_blank_embedding
from mimic_core.checkpoint import convert_checkpoint, read_checkpoint
from mimic_core.errors import ModelFileError
from mimic_core.models import load_models
from mimic_core.pipeline import MimicBrushPipeline


@pytest.fixture(scope="module")
def converted(fixture_dir, tmp_path_factory):
    return convert_checkpoint(fixture_dir / "mimicbrush_tiny.bin",
                              tmp_path_factory.mktemp("blank") / "tiny.safetensors", fixture_dir)


def _load(fixture_dir, checkpoint):
    return load_models(checkpoint, fixture_dir / "vae", fixture_dir / "depth_anything_tiny.pth", config_dir=fixture_dir)


def _encoder_calls(models):
    calls = []
    hook = models.image_encoder.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls, hook


def _rewritten(converted, tmp_path, name, change):
    """The converted file written again with ``change`` applied to its tensors."""
    tensors = load_file(str(converted))
    change(tensors)
    with safe_open(str(converted), "pt") as handle:
        metadata = handle.metadata()
    target = tmp_path / name
    save_file(tensors, str(target), metadata=metadata)
    return target


def test_conversion_stores_the_embedding_its_weights_give(fixture_dir, converted):
    stored = read_checkpoint(converted).blank_embedding
    models = load_models(fixture_dir / "mimicbrush_tiny.bin", fixture_dir / "vae", config_dir=fixture_dir)
    with torch.inference_mode():
        computed = compute_blank_embedding(models.image_encoder, models.image_proj)
    assert stored is not None and stored.shape == (1, 257, 32)
    assert torch.equal(stored, computed)


def test_a_half_conversion_stores_none(fixture_dir, tmp_path):
    target = convert_checkpoint(fixture_dir / "mimicbrush_tiny.bin", tmp_path / "half.safetensors", fixture_dir,
                                dtype=torch.float16)
    with safe_open(str(target), "pt") as handle:
        assert STORED_KEY not in handle.keys()


def test_an_edit_takes_the_stored_embedding_and_runs_the_encoder_on_the_reference_only(fixture_dir, converted, inputs):
    from_file = MimicBrushPipeline(_load(fixture_dir, converted))
    computing = MimicBrushPipeline(_load(fixture_dir, fixture_dir / "mimicbrush_tiny.bin"))
    assert computing.models.stored_blank_embedding is None
    calls, hook = _encoder_calls(from_file.models)
    try:
        encoded = from_file.encode_reference(inputs[2])
    finally:
        hook.remove()
    assert calls == [1]
    assert torch.equal(encoded.embeds_uncond, computing.blank_embedding())
    first = from_file.edit(*inputs, steps=2, seed=5)
    assert torch.equal(first.latents, computing.edit(*inputs, steps=2, seed=5).latents)


def test_the_stored_embedding_is_what_is_used(fixture_dir, converted, tmp_path):
    """Read from the file, not computed: a file whose embedding was changed gives the changed one."""
    doubled = read_checkpoint(converted).blank_embedding * 2
    changed = _rewritten(converted, tmp_path, "changed.safetensors",
                         lambda tensors: tensors.update({STORED_KEY: tensors[STORED_KEY] * 2}))
    pipeline = MimicBrushPipeline(_load(fixture_dir, changed))
    assert torch.equal(pipeline.blank_embedding(), doubled)


def test_a_replaced_or_cast_weight_computes_it_again(fixture_dir, converted):
    models = _load(fixture_dir, converted)
    pipeline = MimicBrushPipeline(models)
    stored = pipeline.blank_embedding()
    projection = models.image_proj.projector
    projection.weight = torch.nn.Parameter(projection.weight.detach() * 2, requires_grad=False)
    calls, hook = _encoder_calls(models)
    try:
        changed = pipeline.blank_embedding()
        assert calls == [1] and not torch.equal(changed, stored)
        models.to(dtype=torch.float64)
        calls.clear()
        assert pipeline.blank_embedding().dtype == torch.float64 and calls == [1]
    finally:
        hook.remove()


def test_an_embedding_of_another_shape_is_refused_with_the_fix(fixture_dir, converted, tmp_path):
    altered = _rewritten(converted, tmp_path, "altered.safetensors",
                         lambda tensors: tensors.update({STORED_KEY: tensors[STORED_KEY][:, :10]}))
    with pytest.raises(ModelFileError, match=r"blank-input embedding of shape \(1, 10, 32\).*\(1, 257, 32\).*Convert"):
        _load(fixture_dir, altered)


def test_a_load_that_casts_computes_it(fixture_dir, converted):
    models = load_models(converted, fixture_dir / "vae", config_dir=fixture_dir, dtype=torch.float64)
    calls, hook = _encoder_calls(models)
    try:
        embedding = MimicBrushPipeline(models).blank_embedding()
    finally:
        hook.remove()
    assert calls == [1] and embedding.dtype == torch.float64


def test_another_image_encoder_config_computes_it(fixture_dir, converted, tmp_path):
    """A config that keeps every weight's shape may still change the function (here the activation):
    the embedding computed under the stored config is not used."""
    import json
    import shutil

    configs = tmp_path / "configs"
    shutil.copytree(fixture_dir, configs, ignore=lambda folder, names: [n for n in names if not n.endswith("_config.json")])
    encoder_config = json.loads((configs / "image_encoder_config.json").read_text())
    encoder_config["hidden_act"] = "quick_gelu" if encoder_config["hidden_act"] == "gelu" else "gelu"
    (configs / "image_encoder_config.json").write_text(json.dumps(encoder_config))
    assert read_checkpoint(converted, fixture_dir).blank_embedding is not None
    assert read_checkpoint(converted, configs).blank_embedding is None


def test_a_value_a_later_version_derives_is_passed_over(fixture_dir, converted, tmp_path):
    later = _rewritten(converted, tmp_path, "later.safetensors",
                       lambda tensors: tensors.update({"derived.something_new": torch.zeros(3)}))
    assert read_checkpoint(later).blank_embedding is not None
