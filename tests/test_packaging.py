"""The pack as the Comfy Registry, ComfyUI-Manager and pip see it: its metadata meets the
registry's rules, its dependencies have one source, and none of its names is another pack's."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest

from tests.e2e.comfy_host import PACK_NAME
from tests.support import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _manager_file(name: str) -> dict:
    """A list that ComfyUI-Manager ships (``pip install comfyui-manager``, in the dev extra). Found
    without importing the package, which imports ComfyUI's modules."""
    spec = importlib.util.find_spec("comfyui_manager")
    if spec is None:
        pytest.skip("comfyui-manager is not installed: pip install -r requirements-dev.txt")
    return json.loads((Path(spec.submodule_search_locations[0]) / name).read_text())


def _node_class_names() -> set[str]:
    """The node classes the pack registers, read from ``nodes/__init__.py`` (importing it needs ComfyUI)."""
    tree = ast.parse((REPO / "nodes" / "__init__.py").read_text())
    modules = next(node.value for node in ast.walk(tree)
                   if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "NODE_MODULES")
    return {name for nodes in ast.literal_eval(modules).values() for name in nodes}


def _repository_folder(url: str) -> str:
    return url.rstrip("/").removesuffix(".git").rsplit("/", 1)[-1]


def test_project_metadata_meets_the_comfy_registry_rules():
    name = PROJECT["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", name)
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"])
    assert (REPO / PROJECT["license"]["file"]).is_file()
    assert PROJECT["description"]
    assert PROJECT["urls"]["Repository"].startswith("https://")
    comfy = PYPROJECT["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9-]*", comfy["PublisherId"]) and comfy["DisplayName"]


def test_dependencies_have_one_source_and_leave_torch_to_comfyui():
    """pip reads requirements.txt through pyproject (the Manager and ComfyUI read it directly)."""
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]
    assert "dependencies" in PROJECT["dynamic"] and "dependencies" not in PROJECT
    assert dynamic["dependencies"]["file"] == ["requirements.txt"]
    extras = {extra: spec["file"] for extra, spec in dynamic["optional-dependencies"].items()}
    assert extras == {"train": ["requirements-train.txt"], "dev": ["requirements-dev.txt"]}
    for file in ["requirements.txt", *sum(extras.values(), [])]:
        lines = [line.strip() for line in (REPO / file).read_text().splitlines()]
        requirements = [line for line in lines if line and not line.startswith("#")]
        assert requirements and not [line for line in requirements if line.startswith("-")], file
        assert not [line for line in requirements if re.match(r"torch(vision|audio)?\b", line)], file


def test_the_repository_folder_is_the_pack_folder_the_tests_install():
    assert _repository_folder(PROJECT["urls"]["Repository"]) == PACK_NAME


def test_no_pack_in_the_manager_s_list_has_our_id_folder_or_title():
    """The Manager matches an installed pack to its list by folder name; "ComfyUI-MimicBrush" is AIFSH's."""
    ours = {PROJECT["name"].lower(), PACK_NAME.lower(), PYPROJECT["tool"]["comfy"]["DisplayName"].lower()}
    for pack in _manager_file("custom-node-list.json")["custom_nodes"]:
        theirs = {str(pack.get("id", "")).lower(), str(pack.get("title", "")).lower()}
        theirs |= {_repository_folder(url).lower() for url in [pack.get("reference", ""), *pack.get("files", [])] if url}
        assert not ours & theirs, f"{pack.get('title')} ({pack.get('reference')}) uses {ours & theirs}"


def test_every_node_id_of_ours_carries_the_pack_s_prefix_but_the_one_kept_for_saved_workflows():
    """A generic id is open to another pack's (early comfyui_controlnet_aux registered "DepthAnythingLoader"):
    whichever pack loads last takes it. The depth loader's first id stays, deprecated, so that workflows
    saved with it still load; the shipped workflows use the prefixed one."""
    ours = _node_class_names()
    assert {name for name in ours if not name.startswith("MimicBrush")} == {"DepthAnythingLoader"}
    loaders = ast.parse((REPO / "nodes" / "loaders.py").read_text())
    kept = next(node for node in loaders.body if isinstance(node, ast.ClassDef) and node.name == "DepthAnythingLoader")
    assert [base.id for base in kept.bases] == ["MimicBrushDepthAnythingLoader"]
    assert any(isinstance(node, ast.Assign) and node.targets[0].id == "DEPRECATED" and node.value.value is True
               for node in kept.body)
    shipped = {node["type"] for path in (REPO / "workflows").glob("*.json")
               for node in json.loads(path.read_text())["nodes"]}
    shipped |= {node["class_type"] for path in (REPO / "workflows" / "api").glob("*.json")
                for node in json.loads(path.read_text()).values()}
    assert "DepthAnythingLoader" not in shipped and "MimicBrushDepthAnythingLoader" in shipped


def test_no_node_class_of_ours_is_in_another_pack_s_node_map():
    ours = _node_class_names()
    assert "MimicBrushSampler" in ours
    for url, (nodes, _) in _manager_file("extension-node-map.json").items():
        assert not ours & set(nodes), f"{url} registers {ours & set(nodes)}"


def test_the_engine_is_packaged_with_its_data_and_a_console_command():
    assert PROJECT["scripts"] == {"mimicbrush": "mimic_core.cli:main"}
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for package, patterns in data.items():
        folder = REPO / Path(*package.split("."))
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches no file"
    shipped = {path.relative_to(REPO / "mimic_core") for path in (REPO / "mimic_core").rglob("*")
               if path.is_file() and path.suffix not in {".py", ".pyc"}}
    packaged = {path.relative_to(REPO / "mimic_core")
                for package, patterns in data.items() for pattern in patterns
                for path in (REPO / Path(*package.split("."))).glob(pattern)}
    assert shipped == packaged, f"data files pip would leave out: {sorted(map(str, shipped - packaged))}"
