"""The ComfyUI hosts for the end-to-end tests: every test that takes ``comfy_host`` runs once on
each host named in ``MIMICBRUSH_COMFY_HOST`` (folders made by ``../shared/comfyui-host/install.sh``,
separated by ``:``). Without one they are skipped with the reason; in CI (``MIMICBRUSH_REQUIRE_ALL=1``)
that is a failure."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.e2e.comfy_host import HOST_SCRIPTS, ComfyHost, host_version, place_fixture_models
from tests.support import REPO, unavailable

HOST_ENV = "MIMICBRUSH_COMFY_HOST"
INSTALL_HINT = (f"install one with 'bash ../shared/comfyui-host/install.sh HOSTDIR .venv/bin/python' (the project's CI "
                f"has that folder beside the clone) and set {HOST_ENV}=HOSTDIR (several: HOSTDIR1:HOSTDIR2)")


def _host_roots() -> list[Path]:
    return [Path(root).resolve() for root in os.environ.get(HOST_ENV, "").split(os.pathsep) if root]


def _host_id(root: Path | None) -> str:
    if root is None or not (root / "ComfyUI" / "main.py").is_file():
        return "no-host"
    return f"comfyui-{host_version(root)}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session", params=_host_roots() or [None], ids=_host_id)
def comfy_host(request, fixture_dir):
    root = request.param
    if root is None:
        unavailable("no ComfyUI host", INSTALL_HINT)
    if not (root / "ComfyUI" / "main.py").is_file():
        unavailable(f"{root} holds no ComfyUI host", INSTALL_HINT)
    if not (HOST_SCRIPTS / "client.py").is_file():
        unavailable(f"no host scripts at {HOST_SCRIPTS}", "set MIMICBRUSH_COMFY_HOST_SCRIPTS to ../shared/comfyui-host")
    host = ComfyHost(root, _free_port())
    place_fixture_models(host.comfy)
    host.empty_input_folder()
    host.start()
    yield host
    host.stop()


@pytest.fixture
def uploads(comfy_host):
    """Files a test puts in the host's input folder, removed again so that the next test finds the
    empty folder of a fresh install."""
    names: list[str] = []
    yield names
    for name in names:
        (comfy_host.comfy / "input" / name).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def chromium():
    path = shutil.which("chromium")
    if path is None:
        unavailable("no chromium for the browser check", "apt-get install -y chromium")
    return path


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("MIMICBRUSH_ARTIFACTS", REPO / ".ci-work" / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
