"""A network run once through gives its memory-mapped weights back layer by layer as it runs."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mimic_core.files import load_safetensors, load_torch_pickle, mapped_pages_released_as_used, release_mapped_pages
from tests.support import resident_bytes

LAYER_BYTES = 2048 * 2048 * 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise page release is Linux-only")
def test_each_layer_gives_its_mapped_weights_back_once_it_has_run(tmp_path):
    torch.manual_seed(0)
    layers = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(6)])  # 16 MiB of weight each
    save_file(layers.state_dict(), str(tmp_path / "layers.safetensors"))
    tensors, _ = load_safetensors(tmp_path / "layers.safetensors")
    layers.load_state_dict(tensors, assign=True)
    before_last = []
    layers[-1].register_forward_pre_hook(lambda *args: before_last.append(resident_bytes()))
    x = torch.randn(4, 2048)
    with torch.inference_mode():
        expected = layers(x)  # every weight paged in
        all_resident = resident_bytes()
        before_last.clear()
        with mapped_pages_released_as_used(layers):
            result = layers(x)
        after = resident_bytes()
        assert torch.equal(result, expected)
        # the first five layers gave theirs back before the last one ran, and the last one at the end
        assert all_resident - before_last[0] > 4 * LAYER_BYTES
        assert all_resident - after > 5.5 * LAYER_BYTES
        assert torch.equal(layers(x), expected)  # read back in from the file, unchanged
    assert all(hooks == {} for hooks in (layer._forward_hooks for layer in layers))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise page release is Linux-only")
def test_a_memory_mapped_torch_checkpoint_gives_its_pages_back_too(tmp_path):
    torch.manual_seed(0)
    saved = {"unet": {"weight": torch.randn(2048, 2048), "bias": torch.randn(2048)}, "other": [torch.randn(1024, 1024)]}
    torch.save(saved, tmp_path / "checkpoint.bin")
    loaded = load_torch_pickle(tmp_path / "checkpoint.bin")
    weights = [loaded["unet"]["weight"], loaded["other"][0]]
    before = resident_bytes()
    assert sum(float(weight.sum()) for weight in weights)  # paged in
    paged_in = resident_bytes()
    assert paged_in - before > 0.9 * LAYER_BYTES
    assert release_mapped_pages(weights) > 0.9 * (LAYER_BYTES + LAYER_BYTES // 4)
    assert paged_in - resident_bytes() > 0.9 * LAYER_BYTES
    assert torch.equal(loaded["unet"]["weight"], saved["unet"]["weight"])  # read back in from the file
    assert torch.equal(loaded["other"][0], saved["other"][0])
    copied = loaded["unet"]["weight"].clone()
    assert release_mapped_pages([copied]) == 0  # a copy is not file-backed
