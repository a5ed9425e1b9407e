"""Reading, validating and converting MimicBrush checkpoints, and refusing bad ones."""

from __future__ import annotations

import json
import pickle
import shutil
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mimic_core.checkpoint import PARTS, convert_checkpoint, default_config, read_checkpoint
from mimic_core.components import build_components, build_unet
from mimic_core.errors import ModelFileError
from tests.support import resident_bytes


def _equal_state_dicts(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bin_and_safetensors_hold_the_same_tensors(fixture_dir):
    from_bin = read_checkpoint(fixture_dir / "mimicbrush_tiny.bin")
    from_st = read_checkpoint(fixture_dir / "mimicbrush_tiny.safetensors")
    for part in PARTS:
        assert _equal_state_dicts(from_bin.state_dicts[part], from_st.state_dicts[part]), part


def test_a_converted_checkpoint_is_readable_as_the_user_s_other_new_files(tmp_path):
    """safetensors writes its file 0o600; the conversion gives it the umask's mode, so a ComfyUI run by
    another user (a container, a shared server) can read it."""
    import os

    from mimic_core.demo import demo_model_files

    previous = os.umask(0o022)
    try:
        shared = convert_checkpoint(demo_model_files().checkpoint, tmp_path / "shared.safetensors")
        os.umask(0o077)
        private = convert_checkpoint(demo_model_files().checkpoint, tmp_path / "private.safetensors")
    finally:
        os.umask(previous)
    assert shared.stat().st_mode & 0o777 == 0o644
    assert private.stat().st_mode & 0o777 == 0o600
    assert read_checkpoint(shared).state_dicts.keys() == set(PARTS)


def test_conversion_is_self_describing_and_round_trips(fixture_dir, tmp_path):
    target = convert_checkpoint(fixture_dir / "mimicbrush_tiny.bin", tmp_path / "tiny.safetensors", fixture_dir)
    with safe_open(str(target), "pt") as handle:
        metadata = handle.metadata()
    stored = json.loads(metadata["unet_config"])
    assert stored == json.loads((fixture_dir / "unet_config.json").read_text())
    assert metadata["mimicbrush_format"] == "mimicbrush"
    assert not (tmp_path / "tiny.safetensors.partial").exists()

    reread = read_checkpoint(target)  # no config dir: the stored configs are used
    original = read_checkpoint(fixture_dir / "mimicbrush_tiny.bin", fixture_dir)
    assert reread.configs == original.configs
    for part in PARTS:
        assert _equal_state_dicts(reread.state_dicts[part], original.state_dicts[part])
    built = build_components(reread)
    assert built["unet"].config.in_channels == 13
    assert built["referencenet"].config.in_channels == 4


def test_half_conversion_halves_float_tensors(fixture_dir, tmp_path):
    target = convert_checkpoint(fixture_dir / "mimicbrush_tiny.bin", tmp_path / "half.safetensors", fixture_dir,
                                dtype=torch.float16)
    reread = read_checkpoint(target)
    assert reread.state_dicts["unet"]["conv_in.weight"].dtype == torch.float16


def test_without_configs_the_released_architecture_is_assumed(fixture_dir):
    checkpoint = read_checkpoint(fixture_dir / "mimicbrush_tiny.bin")
    assert checkpoint.configs["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    with pytest.raises(ModelFileError, match="do not fit its architecture.*--config-dir"):
        build_components(checkpoint)


def _unet_of_the_fixture_but(fixture_dir, **changes) -> dict[str, torch.Tensor]:
    """The tensors of a tiny U-Net built from the fixture's config with ``changes``: another kind of U-Net."""
    from diffusers import UNet2DConditionModel

    config = json.loads((fixture_dir / "unet_config.json").read_text()) | changes
    return UNet2DConditionModel.from_config(config).state_dict()


def _with_unet(fixture_dir, tmp_path, unet: dict[str, torch.Tensor]):
    """The tiny checkpoint as an authors' .bin whose imitative U-Net is ``unet``."""
    parts = torch.load(fixture_dir / "mimicbrush_tiny.bin", weights_only=True)
    torch.save(parts | {"unet": unet}, tmp_path / "other.bin")
    return tmp_path / "other.bin"


@pytest.mark.parametrize("given, unet, answer", [
    ("a U-Net of 9 input channels", lambda fixture: _unet_of_the_fixture_but(fixture, in_channels=9),
     r"1 key of another shape \(e\.g\. conv_in\.weight: file \(8, 9, 3, 3\), model \(8, 13, 3, 3\)\)\. "
     r"They are a U-Net of 9 input channels and cross-attention width 32, where this architecture takes 13 and 32"),
    ("a plain SD U-Net (4 input channels)", lambda fixture: _unet_of_the_fixture_but(fixture, in_channels=4),
     "They are a U-Net of 4 input channels"),
    ("an SDXL U-Net", lambda fixture: _unet_of_the_fixture_but(
        fixture, in_channels=4, cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=64),
     r"unexpected keys \(e\.g\. \['add_embedding.*width 2048 \(an SDXL U-Net\)"),
    ("a U-Net cut short (half its keys)",
     lambda fixture: dict(list(read_checkpoint(fixture / "mimicbrush_tiny.bin").state_dicts["unet"].items())[::2]),
     r"missing keys \(e\.g\. .*probably cut short .*download or export it again"),
])
def test_conversion_refuses_weights_the_configs_do_not_build_with_the_loader_s_words_and_writes_nothing(
        fixture_dir, tmp_path, given, unet, answer):
    """A file of another model was written out whole and failed only when loaded; convert now refuses it
    first, by the loader's own check (the same message), before any folder or file is made."""
    source = _with_unet(fixture_dir, tmp_path, unet(fixture_dir))
    with pytest.raises(ModelFileError) as at_load:
        build_components(read_checkpoint(source, fixture_dir))
    target = tmp_path / "converted" / "mimicbrush.safetensors"
    with pytest.raises(ModelFileError, match=answer) as at_convert:
        convert_checkpoint(source, target, fixture_dir)
    message = str(at_convert.value)
    assert message == str(at_load.value)
    assert message.startswith("The 'unet' weights do not fit its architecture: ") and "\n" not in message
    assert not target.parent.exists()


def test_the_convert_command_refuses_weights_the_released_configs_do_not_build_in_one_line(fixture_dir, tmp_path,
                                                                                            capsys, monkeypatch):
    """The tiny weights without their configs: the released architecture is assumed and does not fit."""
    from mimic_core.cli import main
    from mimic_core.command_options import CONFIG_DIR_ENV

    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    target = tmp_path / "models" / "mimicbrush.safetensors"
    status = main(["convert", str(fixture_dir / "mimicbrush_tiny.bin"), str(target)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and sum("error:" in line for line in lines) == 1, lines
    assert lines[-1].startswith("error: The 'unet' weights do not fit its architecture: 685 keys of another shape")
    assert "where this architecture takes 13 and 768" in lines[-1] and "--config-dir DIR" in lines[-1]
    assert not target.parent.exists()


def test_released_unet_architectures_have_sd15_sizes():
    with torch.device("meta"):
        from diffusers import UNet2DConditionModel
        unet = UNet2DConditionModel.from_config(default_config("unet"))
    count = sum(p.numel() for p in unet.parameters())
    # SD-1.5 has 859,520,964 parameters; 9 more input channels add 9 * 320 * 3 * 3.
    assert count == 859_520_964 + 9 * 320 * 9


def test_reference_unet_accepts_exactly_the_documented_absences(fixture_dir):
    checkpoint = read_checkpoint(fixture_dir / "mimicbrush_tiny.bin", fixture_dir)
    state_dict = dict(checkpoint.state_dicts["referencenet"])
    build_unet(checkpoint.configs["referencenet"], state_dict, "referencenet", reference=True)
    state_dict.pop("up_blocks.3.attentions.2.transformer_blocks.0.norm1.weight")
    with pytest.raises(ModelFileError, match="1 missing.*norm1"):
        build_unet(checkpoint.configs["referencenet"], state_dict, "referencenet", reference=True)
    with pytest.raises(ModelFileError, match="missing"):
        build_unet(checkpoint.configs["unet"] | {"in_channels": 4}, checkpoint.state_dicts["referencenet"], "unet")


@pytest.mark.parametrize("part", PARTS)
def test_a_missing_part_is_named(fixture_dir, tmp_path, part):
    loaded = torch.load(fixture_dir / "mimicbrush_tiny.bin", weights_only=True)
    del loaded[part]
    torch.save(loaded, tmp_path / "partial.bin")
    with pytest.raises(ModelFileError, match=f"lacks the part\\(s\\) '{part}'"):
        read_checkpoint(tmp_path / "partial.bin")
    flat = {f"{p}.{k}": v for p, sd in loaded.items() for k, v in sd.items()}
    save_file(flat, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ModelFileError, match=f"'{part}'"):
        read_checkpoint(tmp_path / "partial.safetensors")


LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\noid sha256:"
               "4d7a5c1e0e6f2b9a8c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b\nsize 9400000000\n")


@pytest.mark.parametrize("suffix", [".bin", ".safetensors", ".pth"])
@pytest.mark.parametrize("content, answer", [
    (LFS_POINTER, "is a Git LFS pointer .* fetch the file itself"),
    ("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Sign in</body></html>\n",
     "is a web page .* download it again"),
    ("hello\n", "is a text file, not a model file: download it again"),
])
def test_text_saved_in_place_of_a_model_is_named_for_what_it_is(tmp_path, suffix, content, answer):
    """The usual failed download (an LFS pointer from a clone without LFS, an error page): one message
    that says what the file is, not a pickle refusal or a torch traceback (a text .bin gave KeyError),
    for the checkpoint, a VAE file and a VAE folder (what a clone of the VAE's repository without LFS
    holds)."""
    from mimic_core.files import load_state_dict_file
    from mimic_core.vae import load_vae

    path = tmp_path / f"mimicbrush{suffix}"
    path.write_text(content)
    with pytest.raises(ModelFileError, match=answer):
        read_checkpoint(path) if suffix != ".pth" else load_state_dict_file(path)
    if suffix == ".safetensors":
        with pytest.raises(ModelFileError, match=answer):
            load_vae(path)
        folder = tmp_path / "sd-vae-ft-mse"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
        (folder / "diffusion_pytorch_model.safetensors").write_text(content)
        with pytest.raises(ModelFileError, match=answer):
            load_vae(folder)


def test_a_folder_given_as_the_checkpoint_is_named_a_folder(tmp_path):
    with pytest.raises(ModelFileError, match="should be a file, but .* is a folder: give the file in it"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["mimicbrush_tiny.bin", "mimicbrush_tiny.safetensors"])
def test_a_truncated_file_is_reported_as_damaged(fixture_dir, tmp_path, name):
    data = (fixture_dir / name).read_bytes()
    broken = tmp_path / name
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt|damaged"):
        read_checkpoint(broken)


class _Payload:
    """Unpickling this would create a file: proof of code execution if it ever appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "mimicbrush.bin"
    torch.save({part: {"w": torch.zeros(1)} for part in PARTS} | {"extra": _Payload(marker)}, hostile)
    with pytest.raises(ModelFileError, match="refused without running"):
        read_checkpoint(hostile)
    assert not marker.exists()
    # the same payload in a legacy (non-zip) pickle
    with open(tmp_path / "legacy.bin", "wb") as handle:
        pickle.dump(_Payload(marker), handle)
    with pytest.raises(ModelFileError):
        read_checkpoint(tmp_path / "legacy.bin")
    assert not marker.exists()


def test_a_safetensors_file_of_another_model_is_refused(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"model.layers.0.weight": torch.zeros(2, 2), "lm_head.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(ModelFileError, match="not a complete MimicBrush checkpoint"):
        read_checkpoint(other)


def test_a_missing_file_names_where_to_download(tmp_path):
    with pytest.raises(ModelFileError, match="xichenhku/MimicBrush"):
        read_checkpoint(tmp_path / "mimicbrush.bin")


def test_conversion_never_replaces_its_source(fixture_dir, tmp_path):
    source = tmp_path / "ckpt.safetensors"
    shutil.copy(fixture_dir / "mimicbrush_tiny.safetensors", source)
    before = source.read_bytes()
    with pytest.raises(ModelFileError, match="must not replace its source"):
        convert_checkpoint(source, source)
    assert source.read_bytes() == before


def test_safetensors_tensors_are_memory_mapped_not_copied(fixture_dir, tmp_path):
    from mimic_core.files import load_safetensors

    tensors, metadata = load_safetensors(fixture_dir / "mimicbrush_tiny.safetensors")
    storages = {t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()}
    assert len(storages) == 1  # one mapping of the file, every tensor a view of it
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes((fixture_dir / "mimicbrush_tiny.safetensors").read_bytes())
    mapped, _ = load_safetensors(copy)
    before = copy.read_bytes()
    next(iter(mapped.values())).add_(1)  # copy-on-write: the file never changes
    assert copy.read_bytes() == before


def test_a_malformed_safetensors_header_is_reported(tmp_path):
    bad = tmp_path / "bad.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [2]}}'
    bad.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(ModelFileError, match="malformed header"):
        read_checkpoint(bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise page release is Linux-only")
def test_released_weights_leave_resident_memory_and_read_back_unchanged(tmp_path):
    from mimic_core.files import load_safetensors, release_mapped_pages

    weight = torch.arange(16 * 2**20, dtype=torch.float32)  # 64 MiB
    save_file({"weight": weight, "bias": torch.ones(3)}, str(tmp_path / "model.safetensors"))
    tensors, _ = load_safetensors(tmp_path / "model.safetensors")
    before = resident_bytes()
    assert torch.equal(tensors["weight"], weight)  # reading maps every page in
    touched = resident_bytes()
    assert touched - before > 48 * 2**20
    assert release_mapped_pages(tensors.values()) > 60 * 2**20
    assert touched - resident_bytes() > 48 * 2**20
    assert torch.equal(tensors["weight"], weight)  # and reading again brings the file's values back
    assert release_mapped_pages([tensors["weight"].clone(), torch.ones(2**20)]) == 0  # not file-backed: untouched


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise page release is Linux-only")
def test_a_cast_gives_back_each_memory_mapped_weight_once_its_copy_is_made(fixture_dir, monkeypatch):
    from mimic_core import models as models_module
    from mimic_core.files import release_mapped_pages

    released = []
    monkeypatch.setattr(models_module, "release_mapped_pages",
                        lambda tensors: released.append(release_mapped_pages(tensors)) or released[-1])
    models = models_module.load_models(fixture_dir / "mimicbrush_tiny.safetensors", fixture_dir / "vae",
                                       config_dir=fixture_dir, inference_layers=False)
    originals = {name: parameter.detach().clone() for name, parameter in models.unet.named_parameters()}
    mapped = sum(parameter.numel() * 4 for module in (models.unet, models.referencenet, models.image_encoder)
                 for parameter in module.parameters())
    released.clear()
    models.to(dtype=torch.bfloat16)
    # every page of the networks' file-backed weights but the partial ones at each tensor's edges
    assert sum(released) > 0.5 * mapped
    for name, parameter in models.unet.named_parameters():
        assert parameter.dtype == torch.bfloat16
        assert torch.equal(parameter, originals[name].to(torch.bfloat16))


def test_a_config_folder_that_is_missing_or_holds_no_config_is_refused_by_name(tmp_path):
    """A mistyped --config-dir was passed over for the released architecture, and the weights then
    failed to fit it, with advice to pass the option that had been passed."""
    from mimic_core.demo import demo_model_files

    checkpoint = demo_model_files().checkpoint
    with pytest.raises(ModelFileError, match="config folder .*nope' is not a folder"):
        read_checkpoint(checkpoint, tmp_path / "nope")
    with pytest.raises(ModelFileError, match="holds no <part>_config.json file"):
        read_checkpoint(checkpoint, tmp_path)


def test_converting_onto_a_folder_or_below_a_file_is_refused_before_reading(tmp_path):
    from mimic_core.demo import demo_model_files

    checkpoint = demo_model_files().checkpoint
    (tmp_path / "out.safetensors").mkdir()
    with pytest.raises(ModelFileError, match="is a folder: give the converted file's name"):
        convert_checkpoint(checkpoint, tmp_path / "out.safetensors")
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(ModelFileError, match="notes.txt' is a file, not a folder"):
        convert_checkpoint(checkpoint, tmp_path / "notes.txt" / "out.safetensors")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt", "out.safetensors"]
