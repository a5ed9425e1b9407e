"""The ComfyUI host for the end-to-end tests; skipped (or, in CI, failed) when none is installed."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.e2e.comfy_host import ComfyHost, place_fixture_models
from tests.support import REPO

HOST_ENV = "MIMICBRUSH_COMFY_HOST"
REQUIRE_ENV = "MIMICBRUSH_REQUIRE_E2E"


def _unavailable(reason: str):
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires the end-to-end tests)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def comfy_host(fixture_dir):
    root = os.environ.get(HOST_ENV)
    if not root or not (Path(root) / "ComfyUI" / "main.py").is_file():
        _unavailable(f"no ComfyUI host: set {HOST_ENV} to a folder made by ../shared/comfyui-host/install.sh")
    host = ComfyHost(Path(root).resolve(), _free_port())
    place_fixture_models(host.comfy)
    for image in (REPO / "workflows" / "inputs").glob("*.png"):
        shutil.copy(image, host.comfy / "input" / image.name)
    host.start()
    yield host
    host.stop()


@pytest.fixture(scope="session")
def chromium():
    path = shutil.which("chromium")
    if path is None:
        _unavailable("no chromium for the browser check: apt-get install -y chromium")
    return path


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("MIMICBRUSH_ARTIFACTS", REPO / ".ci-work" / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
