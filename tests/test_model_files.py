"""Finding the model files in a models folder laid out as the authors' downloads are."""

from __future__ import annotations

import pytest

from mimic_core.errors import ModelFileError
from mimic_core.model_files import find_model_files


def _models_folder(root, *files: str):
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    (root / "sd-vae-ft-mse").mkdir(exist_ok=True)
    return root


def test_the_authors_layout_is_found(tmp_path):
    root = _models_folder(tmp_path, "mimicbrush/mimicbrush.bin", "depth_model/depth_anything_vitb14.pth")
    found = find_model_files(root)
    assert (found.checkpoint, found.vae, found.depth_model) == (
        root / "mimicbrush/mimicbrush.bin", root / "sd-vae-ft-mse", root / "depth_model/depth_anything_vitb14.pth")


def test_a_transformers_format_depth_folder_is_found_and_the_authors_pth_comes_first(tmp_path):
    """The README says a transformers-format Depth Anything folder works in place of the .pth (the demo
    model's is one): under depth_model/ the folder is the depth model; beside a .pth the .pth wins."""
    root = _models_folder(tmp_path, "mimicbrush/mimicbrush.safetensors", "depth_model/config.json",
                          "depth_model/model.safetensors")
    assert find_model_files(root).depth_model == root / "depth_model"
    (root / "depth_model" / "depth_anything_vitb14.pth").touch()
    assert find_model_files(root).depth_model == root / "depth_model" / "depth_anything_vitb14.pth"


def test_a_models_folder_that_is_a_file_or_missing_is_named_so(tmp_path):
    (tmp_path / "photo.png").touch()
    with pytest.raises(ModelFileError, match="is a file, not a folder"):
        find_model_files(tmp_path / "photo.png")
    with pytest.raises(ModelFileError, match="does not exist"):
        find_model_files(tmp_path / "missing")
