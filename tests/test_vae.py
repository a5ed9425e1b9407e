"""The SD VAE loader: diffusers folders, single files in both key layouts, and bad files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from mimic_core.errors import ModelFileError
from mimic_core.vae import SD_VAE_CONFIG, load_vae

HF_REPO = "stabilityai/sd-vae-ft-mse"


@pytest.fixture(scope="module")
def vae_dir(fixture_dir) -> Path:
    return fixture_dir / "vae"


@pytest.fixture(scope="module")
def file_tensors(vae_dir) -> dict[str, torch.Tensor]:
    return load_file(str(vae_dir / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def folder_vae(vae_dir) -> AutoencoderKL:
    return load_vae(vae_dir)


def _image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1


def _latent() -> torch.Tensor:
    generator = torch.Generator().manual_seed(4321)
    return torch.randn(1, 4, 8, 8, generator=generator)


@torch.no_grad()
def _outputs(vae: AutoencoderKL) -> tuple[torch.Tensor, torch.Tensor]:
    """(posterior mean of the fixed image, decoding of the fixed latent)."""
    return vae.encode(_image()).latent_dist.mean, vae.decode(_latent()).sample


# --- test scaffolding: diffusers -> LDM/CompVis key names (the reverse of diffusers' converter) ---

_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_to_ldm(state: dict[str, torch.Tensor], num_up_blocks: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = key
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv.", new)
        match = re.match(r"^decoder\.up_blocks\.(\d+)\.(.*)$", new)
        if match:  # LDM numbers the decoder's up blocks the other way round
            rest = re.sub(r"^resnets\.(\d+)\.", r"block.\1.", match.group(2))
            rest = rest.replace("upsamplers.0.conv.", "upsample.conv.")
            new = f"decoder.up.{num_up_blocks - 1 - int(match.group(1))}.{rest}"
        new = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", new)
        match = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", new)
        if match:  # LDM attention uses 1x1 convs where diffusers uses linear layers
            new = f"{match.group(1)}.mid.attn_1.{_ATTN[match.group(2)]}.{match.group(3)}"
            if match.group(2) != "group_norm" and match.group(3) == "weight":
                value = value[:, :, None, None]
        new = new.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        out[new] = value.clone()
    return out


@pytest.fixture(scope="module")
def ldm_tensors(file_tensors, vae_dir) -> dict[str, torch.Tensor]:
    num_up = len(json.loads((vae_dir / "config.json").read_text())["up_block_types"])
    ldm = diffusers_to_ldm(file_tensors, num_up)
    assert len(ldm) == len(file_tensors)
    leftover = [k for k in ldm if re.search(r"_blocks|resnets|samplers|to_q|to_out|group_norm|conv_norm|shortcut\b", k)
                and "nin_shortcut" not in k]
    assert not leftover, f"test mapping left diffusers names: {leftover}"
    assert ldm["encoder.mid.attn_1.q.weight"].ndim == 4
    assert any(".nin_shortcut." in k for k in ldm) and any(".upsample.conv." in k for k in ldm)
    return ldm


# --- 1. diffusers folder ---

def test_folder_load_matches_file_and_is_deterministic(folder_vae, file_tensors, vae_dir):
    vae = folder_vae
    assert isinstance(vae, AutoencoderKL)
    assert not vae.training
    assert not any(p.requires_grad for p in vae.parameters())
    assert vae.config.scaling_factor == pytest.approx(0.18215)

    state = vae.state_dict()
    assert set(state) == set(file_tensors)
    for key, tensor in file_tensors.items():
        assert state[key].dtype == torch.float32 and state[key].device.type == "cpu"
        assert torch.equal(state[key], tensor), key

    mean_a, decoded_a = _outputs(vae)
    mean_b, decoded_b = _outputs(vae)
    assert mean_a.shape == (1, 4, 8, 8) and decoded_a.shape == (1, 3, 64, 64)
    assert torch.isfinite(mean_a).all() and mean_a.std() > 0.1
    assert torch.equal(mean_a, mean_b) and torch.equal(decoded_a, decoded_b)
    with torch.no_grad():
        dist = vae.encode(_image()).latent_dist
        sample_a = dist.sample(torch.Generator().manual_seed(7))
        sample_b = dist.sample(torch.Generator().manual_seed(7))
    assert torch.equal(sample_a, sample_b)

    # Same model as diffusers' own from_pretrained (local files only).
    reference = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).eval()
    ref_mean, ref_decoded = _outputs(reference)
    assert torch.equal(mean_a, ref_mean) and torch.equal(decoded_a, ref_decoded)


def test_folder_load_honours_dtype(vae_dir, file_tensors):
    vae = load_vae(vae_dir, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in vae.parameters())
    key = "decoder.conv_out.weight"
    assert torch.equal(vae.state_dict()[key], file_tensors[key].double())


# --- 2. single file, diffusers layout ---

@pytest.mark.parametrize("config_form", ["json_file", "folder", "dict"])
def test_single_file_diffusers_layout(tmp_path, vae_dir, file_tensors, folder_vae, config_form):
    target = tmp_path / "vae.safetensors"
    save_file(file_tensors, str(target))
    config = {"json_file": vae_dir / "config.json", "folder": vae_dir,
              "dict": json.loads((vae_dir / "config.json").read_text())}[config_form]
    vae = load_vae(target, config=config)
    for got, want in zip(_outputs(vae), _outputs(folder_vae)):
        assert torch.equal(got, want)


def test_single_file_legacy_diffusers_attention_names(tmp_path, vae_dir, file_tensors, folder_vae):
    """Old diffusers files (and many sd-vae-ft-mse copies) name attention query/key/value/proj_attn."""
    legacy = {}
    for key, value in file_tensors.items():
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
            key = key.replace(new, old)
        legacy[key] = value
    assert "encoder.mid_block.attentions.0.query.weight" in legacy
    target = tmp_path / "legacy.safetensors"
    save_file(legacy, str(target))
    vae = load_vae(target, config=vae_dir / "config.json")
    for got, want in zip(_outputs(vae), _outputs(folder_vae)):
        assert torch.equal(got, want)


# --- 3. single file, LDM layout ---

@pytest.mark.parametrize("kind", ["safetensors", "ckpt", "full_checkpoint_ckpt", "prefixed_safetensors"])
def test_single_file_ldm_layout(tmp_path, vae_dir, ldm_tensors, folder_vae, kind):
    if kind == "safetensors":
        target = tmp_path / "vae.safetensors"
        save_file(ldm_tensors, str(target))
    elif kind == "prefixed_safetensors":
        target = tmp_path / "model.safetensors"
        save_file({"first_stage_model." + k: v for k, v in ldm_tensors.items()}, str(target))
    else:
        target = tmp_path / "vae.ckpt"
        state = {"first_stage_model." + k: v for k, v in ldm_tensors.items()}
        if kind == "full_checkpoint_ckpt":  # other parts of a full SD checkpoint are ignored
            state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)
            state["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(8)
        torch.save({"state_dict": state}, target)
    vae = load_vae(target, config=vae_dir / "config.json")
    for got, want in zip(_outputs(vae), _outputs(folder_vae)):
        assert (got - want).abs().max().item() <= 1e-6
    assert vae.state_dict()["encoder.mid_block.attentions.0.to_q.weight"].ndim == 2


def test_ldm_layout_is_strict(tmp_path, vae_dir, ldm_tensors):
    extra = dict(ldm_tensors)
    extra["decoder.up.0.block.0.mystery.weight"] = torch.zeros(3)
    extra["encoder.not_a_vae_part"] = torch.zeros(3)
    target = tmp_path / "extra.safetensors"
    save_file(extra, str(target))
    with pytest.raises(ModelFileError, match="unexpected") as info:
        load_vae(target, config=vae_dir / "config.json")
    message = str(info.value)
    assert "extra.safetensors" in message and "not_a_vae_part" in message  # dropped by the converter
    assert "decoder.up_blocks.3.resnets.0.mystery.weight" in message  # renamed by it, then unknown

    missing = {k: v for k, v in ldm_tensors.items() if k != "decoder.mid.attn_1.q.weight"}
    target = tmp_path / "missing.safetensors"
    save_file(missing, str(target))
    with pytest.raises(ModelFileError, match="missing") as info:
        load_vae(target, config=vae_dir / "config.json")
    assert "decoder.mid_block.attentions.0.to_q.weight" in str(info.value)

    # A tensor whose partner diffusers' converter indexes blindly (it reads the bias when the weight exists).
    no_bias = {k: v for k, v in ldm_tensors.items() if k != "decoder.up.1.upsample.conv.bias"}
    target = tmp_path / "no_bias.safetensors"
    save_file(no_bias, str(target))
    with pytest.raises(ModelFileError, match="decoder.up.1.upsample.conv.bias") as info:
        load_vae(target, config=vae_dir / "config.json")
    assert "no_bias.safetensors" in str(info.value)

    # Training leftovers of LDM checkpoints are not part of the autoencoder and are skipped.
    target = tmp_path / "with_loss.safetensors"
    save_file({**ldm_tensors, "loss.logvar": torch.zeros(1)}, str(target))
    load_vae(target, config=vae_dir / "config.json")


# --- 4. bad input ---

def _assert_names(err: pytest.ExceptionInfo, path: Path) -> None:
    message = str(err.value)
    assert str(path) in message, message
    assert HF_REPO in message, message


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "vae.safetensors"
    with pytest.raises(ModelFileError) as err:
        load_vae(path)
    _assert_names(err, path)


def test_folder_without_config(tmp_path, vae_dir):
    folder = tmp_path / "sd-vae-ft-mse"
    folder.mkdir()
    shutil.copy(vae_dir / "diffusion_pytorch_model.safetensors", folder)
    with pytest.raises(ModelFileError, match="config.json") as err:
        load_vae(folder)
    _assert_names(err, folder)
    # With the architecture given explicitly, the same folder loads.
    load_vae(folder, config=vae_dir / "config.json")


def test_truncated_safetensors(tmp_path, vae_dir):
    data = (vae_dir / "diffusion_pytorch_model.safetensors").read_bytes()
    path = tmp_path / "vae.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as err:
        load_vae(path, config=vae_dir / "config.json")
    _assert_names(err, path)


class _Payload:
    """Pickles as a call to ``open(marker, "w")``: loading it unsafely creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_pickle_is_refused_without_running(tmp_path, vae_dir):
    # Control: the payload really does run under an unsafe load.
    control_marker = tmp_path / "control_marker"
    control = tmp_path / "control.pt"
    torch.save({"w": torch.zeros(1), "x": _Payload(control_marker)}, control)
    torch.load(control, weights_only=False)
    assert control_marker.exists()

    marker = tmp_path / "pwned_marker"
    path = tmp_path / "vae.pt"
    torch.save({"encoder.conv_in.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(ModelFileError, match="refused") as err:
        load_vae(path, config=vae_dir / "config.json")
    assert not marker.exists()
    _assert_names(err, path)


def test_other_model_file(tmp_path):
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "not_a_vae.safetensors"
    save_file({"transformer.h.0.attn.c_attn.weight": torch.randn(16, 48, generator=generator),
               "transformer.h.0.ln_1.bias": torch.randn(16, generator=generator)}, str(path))
    with pytest.raises(ModelFileError, match="not an SD 1.x VAE") as err:
        load_vae(path)
    _assert_names(err, path)


def test_vae_of_another_architecture_is_rejected(tmp_path, file_tensors):
    """The tiny VAE against the built-in SD 1.x config: shapes differ, keys are missing."""
    path = tmp_path / "tiny.safetensors"
    save_file(file_tensors, str(path))
    with pytest.raises(ModelFileError, match="not an SD 1.x VAE") as err:
        load_vae(path)
    _assert_names(err, path)
    assert "wrong shape" in str(err.value) and "missing" in str(err.value)


def test_config_of_another_model_is_rejected(tmp_path, fixture_dir, vae_dir):
    path = tmp_path / "vae.safetensors"
    shutil.copy(vae_dir / "diffusion_pytorch_model.safetensors", path)
    unet_config = fixture_dir / "unet_config.json"
    assert json.loads(unet_config.read_text())["_class_name"] == "UNet2DConditionModel"
    with pytest.raises(ModelFileError, match="not for the VAE") as err:
        load_vae(path, config=unet_config)
    assert str(unet_config) in str(err.value)


# --- 5. the built-in config ---

def test_builtin_config_is_the_sd_vae():
    config = json.loads(SD_VAE_CONFIG.read_text())
    assert config["_class_name"] == "AutoencoderKL" and config["scaling_factor"] == 0.18215
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert vae.config.latent_channels == 4 and len(vae.config.block_out_channels) == 4
