"""Load the pack's networks through a ComfyUI host's own model management on a compute device
short of memory, and report where their tensors end up. Run with the host's Python from its
``ComfyUI`` folder (``tests/e2e/test_partial_loading.py`` does):

    python short_memory_load.py PACK_FOLDER_NAME plain|pack

The compute device is simulated with PyTorch's meta device (tensors with shapes and no data, so
any computation that meets a tensor left on the CPU fails with a device mismatch, as on a real
GPU), and ComfyUI is told the device has room for a fifth of the networks, so that it chooses
partial loading. Loads with plain ``load_models_gpu`` (``plain``: the control, showing that the
simulation does trigger partial loading) or with the pack's ``load_to_device`` (``pack``), then
prints one JSON line: how many tensors are off the device, and whether a U-Net step runs there.
One load a process: what sits on the meta device cannot be unloaded back.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path.cwd()), str(Path.cwd() / "custom_nodes")]

from comfy.cli_args import args  # noqa: E402

args.cpu = True  # a CPU build of torch: model management starts on the CPU, then is pointed at the meta device
import comfy.model_management as mm  # noqa: E402

PACK, HOW = sys.argv[1:3]
DEVICE = torch.device("meta")


def short_of_memory(room: int) -> None:
    mm.get_torch_device = lambda: DEVICE
    mm.vram_state = mm.VRAMState.NORMAL_VRAM
    mm.get_free_memory = lambda dev=None, torch_free_too=False: (room, room) if torch_free_too else room


def networks():
    from mimic_core.demo import demo_model_files
    from mimic_core.models import load_models

    files = demo_model_files()
    models = load_models(files.checkpoint, files.vae, files.depth_model)
    return models, models.modules()


def one_step(models) -> str:
    """The imitative U-Net's forward on device inputs: ``ok``, or the error a step would raise."""
    unet = models.unet
    sample = torch.zeros(1, unet.config.in_channels, 16, 16, device=DEVICE)
    context = torch.zeros(1, 4, unet.config.cross_attention_dim, device=DEVICE)
    try:
        unet(sample, torch.tensor(10, device=DEVICE), encoder_hidden_states=context)
    except RuntimeError as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return "ok"


def tensors_off_device(module: torch.nn.Module) -> tuple[int, int]:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(tensor.device != DEVICE for tensor in tensors), len(tensors)


def main() -> None:
    bridge = importlib.import_module(f"{PACK}.nodes.comfy_bridge")
    models, modules = networks()
    size = sum(t.numel() * t.element_size() for m in modules.values() for t in [*m.parameters(), *m.buffers()])
    short_of_memory(size // 5)
    patcher = bridge.make_patcher(modules, torch.float32)
    if HOW == "plain":
        mm.load_models_gpu([patcher])
    else:
        bridge.load_to_device(patcher)
    off, total = tensors_off_device(patcher.model)
    print(json.dumps({"off_device": off, "tensors": total, "step": one_step(models)}))


if __name__ == "__main__":
    main()
