"""The model folders this pack adds to ComfyUI (``models/mimicbrush``, ``models/depth_anything``)."""

from __future__ import annotations

import os

import folder_paths

MIMICBRUSH_FOLDER = "mimicbrush"
DEPTH_FOLDER = "depth_anything"
FOLDER_EXTENSIONS = {
    MIMICBRUSH_FOLDER: {".bin", ".safetensors"},
    DEPTH_FOLDER: {".pth", ".pt", ".safetensors"},
}


def register_model_folders() -> None:
    """Add our folders with their file extensions, keeping paths that extra_model_paths.yaml gave."""
    for name, extensions in FOLDER_EXTENSIONS.items():
        default = os.path.join(folder_paths.models_dir, name)
        paths = list(folder_paths.folder_names_and_paths.get(name, ([], set()))[0])
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions))


DEMO_CHOICE = "built-in demo (tiny, synthetic)"
"""The choice naming the demo model shipped in ``mimic_core/demo``: last in a list, and so the
default only when the folder holds no model, which is how a fresh install runs at all."""


def model_choices(folder: str, with_demo: bool = False) -> list[str]:
    return sorted(folder_paths.get_filename_list(folder)) + ([DEMO_CHOICE] if with_demo else [])


def resolve_model_path(folder: str, name: str, what: str, where: str) -> str:
    """Full path of a listed model file. A file inside a folder that holds a ``config.json``
    (a diffusers or transformers model folder) resolves to that folder."""
    path = folder_paths.get_full_path(folder, name) if name else None
    if path is None or not os.path.exists(path):
        from ..mimic_core.errors import ModelFileError

        searched = ", ".join(folder_paths.get_folder_paths(folder))
        raise ModelFileError(
            f"The {what} '{name}' was not found in ComfyUI's models/{folder} folder ({searched}). "
            f"Download {where} into that folder, then press Refresh in the browser."
        )
    parent = os.path.dirname(path)
    if os.path.basename(path) != "config.json" and os.path.isfile(os.path.join(parent, "config.json")):
        return parent
    return path
