"""The pack installed as a Manager user installs it: ComfyUI-Manager's own command-line installer
(``cm-cli install``, ComfyUI-Manager 4.3) clones it from a git URL into a ComfyUI 0.3.75 host,
installs its requirements line by line, and the server then starts with every node of the pack.

Nothing but this repository is reachable here, so the URL is a bare clone of it
(``file://localhost/...``; the Manager does not take ``file:///...`` as a URL). cm-cli exits 0
even when an install fails, so its ``[INSTALLED]`` line and the folder are what count. 4.3's
cm-cli does not run on the 2024 host (``No module named 'utils'``): this test needs a 0.3.75 host
of its own, with nothing of ours in it, named by ``MIMICBRUSH_MANAGER_HOST``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.comfy_host import NODE_TYPES, PACK_NAME, host_client_class, host_version
from tests.e2e.conftest import _free_port
from tests.support import REPO, unavailable

MANAGER_HOST_ENV = "MIMICBRUSH_MANAGER_HOST"


@pytest.fixture(scope="module")
def manager_host() -> Path:
    root = os.environ.get(MANAGER_HOST_ENV)
    how = (f"install a ComfyUI 0.3.75 host of its own with 'COMFYUI_VERSION=0.3.75 bash ../shared/comfyui-host/install.sh "
           f"HOSTDIR .venv/bin/python', then set {MANAGER_HOST_ENV}=HOSTDIR")
    if not root or not (Path(root) / "ComfyUI" / "main.py").is_file():
        unavailable("no ComfyUI host for the Manager install test", how)
    root = Path(root).resolve()
    if host_version(root) == "2024":
        unavailable(f"{root} is the 2024 host, where ComfyUI-Manager 4.3's cm-cli does not run", how)
    if shutil.which("cm-cli", path=str(Path(sys.executable).parent)) is None:
        unavailable("no cm-cli beside this Python", "pip install -r requirements-dev.txt (comfyui-manager==4.3)")
    return root


def test_comfyui_manager_installs_the_pack_from_its_git_url_and_the_server_finds_its_nodes(manager_host, tmp_path):
    comfy = manager_host / "ComfyUI"
    installed = comfy / "custom_nodes" / PACK_NAME
    shutil.rmtree(installed, ignore_errors=True)
    bare = tmp_path / f"{PACK_NAME}.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(REPO), str(bare)], check=True)
    url = f"file://localhost{bare}"
    try:
        done = subprocess.run([shutil.which("cm-cli", path=str(Path(sys.executable).parent)), "install", url],
                              env={**os.environ, "COMFYUI_PATH": str(comfy), "COLUMNS": "400"}, capture_output=True,
                              text=True, timeout=900)
        report = "".join(done.stdout.split())  # its console wraps long lines
        assert f"[INSTALLED]{url}" in report, done.stdout[-3000:] + done.stderr[-3000:]
        assert (installed / "__init__.py").is_file() and (installed / "nodes").is_dir()
        origin = subprocess.run(["git", "-C", str(installed), "remote", "get-url", "origin"], capture_output=True,
                                text=True, check=True).stdout.strip()
        assert origin == url
        _start_and_find_the_nodes(manager_host, installed)
    finally:
        shutil.rmtree(installed, ignore_errors=True)


def _start_and_find_the_nodes(manager_host: Path, installed: Path) -> None:
    port = _free_port()
    log_path = manager_host / "manager_server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(manager_host / "python"), "main.py", "--cpu", "--listen", "127.0.0.1", "--port",
                                   str(port), "--disable-auto-launch", "--disable-api-nodes"],
                                  cwd=manager_host / "ComfyUI", stdout=log, stderr=subprocess.STDOUT)
    try:
        client = host_client_class()(f"http://127.0.0.1:{port}")
        client.wait_ready()
        info = client.object_info()
        assert not [node for node in NODE_TYPES if node not in info], log_path.read_text()[-3000:]
        assert all(info[node]["python_module"].endswith(PACK_NAME) for node in NODE_TYPES)
        ours = [line for line in log_path.read_text().splitlines() if str(installed) in line]
        assert ours and not [line for line in ours if "IMPORT FAILED" in line or "Cannot import" in line], ours
    finally:
        server.terminate()
        server.wait(timeout=60)
