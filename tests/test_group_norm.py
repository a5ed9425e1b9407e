"""GroupNorm written over its input a few groups at a time gives the stock result bit for bit, and
never makes a tensor of its input's size."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mimic_core import group_norm
from mimic_core.group_norm import group_norm_in_place, normalizes_in_place


def _norm(groups: int, channels: int, affine: bool = True) -> nn.GroupNorm:
    torch.manual_seed(0)
    norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.normal_(1, 0.5)
            norm.bias.normal_(0, 0.5)
    return norm


class LargestOutput(TorchDispatchMode):
    """The largest tensor any operation makes while active, in elements."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and not func.is_view:
                self.elements = max(self.elements, tensor.numel())
        return out


@pytest.mark.parametrize("shape, groups, values", [
    ((1, 128, 64, 48), 32, 1 << 14),   # two groups per part
    ((2, 64, 33, 17), 8, 5000),        # batch 2, one group per part (a part is smaller than a group)
    ((1, 24, 10, 10), 3, 1 << 21),     # all groups in one part
    ((3, 12, 5, 7), 12, 300),          # one channel per group
], ids=["two groups a part", "batch 2, a group a part", "one part", "a channel a group"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no affine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_in_place_is_the_stock_group_norm_bit_for_bit(shape, groups, values, affine, dtype, monkeypatch):
    monkeypatch.setattr(group_norm, "VALUES_AT_A_TIME", values)
    norm = _norm(groups, shape[1], affine).to(dtype)
    x = (torch.randn(shape) * 3 + 1.5).to(dtype)
    with torch.inference_mode():
        expected = norm(x)
        written = x.clone()
        result = group_norm_in_place(norm, written)
    assert result is written
    assert torch.equal(result, expected)


def test_no_tensor_of_the_input_size_is_made(monkeypatch):
    monkeypatch.setattr(group_norm, "VALUES_AT_A_TIME", 1 << 14)
    norm = _norm(32, 128)
    x = torch.randn(1, 128, 64, 64)
    with torch.inference_mode(), LargestOutput() as largest:
        group_norm_in_place(norm, x)
    # a part holds VALUES_AT_A_TIME values (here two groups), or one group per thread where there are more threads
    assert largest.elements <= max(1 << 14, torch.get_num_threads() * 4 * 64 * 64) < x.numel()


def test_what_it_does_not_compute_is_refused():
    norm = _norm(4, 8)

    class Scaled(nn.GroupNorm):
        def forward(self, input):
            return 2 * super().forward(input)

    channels_last = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    assert normalizes_in_place(norm, torch.randn(1, 8, 4, 4))
    assert not normalizes_in_place(norm, channels_last)
    assert not normalizes_in_place(norm, torch.randn(1, 8, 4, 4)[:, :, :, ::2])
    assert not normalizes_in_place(Scaled(4, 8), torch.randn(1, 8, 4, 4))
    assert not normalizes_in_place(norm, torch.randn(1, 8, 16))
    with pytest.raises(ValueError, match="plain nn.GroupNorm and a contiguous"):
        group_norm_in_place(norm, channels_last)


def test_a_part_holds_a_row_for_each_thread(monkeypatch):
    monkeypatch.setattr(group_norm, "VALUES_AT_A_TIME", 1)
    threads = torch.get_num_threads()
    norm = _norm(32, 128)
    x = torch.randn(1, 128, 16, 16)
    with torch.inference_mode():
        expected = norm(x)
        result = x.clone()
    torch.set_num_threads(4)
    try:
        with torch.inference_mode(), LargestOutput() as largest:
            group_norm_in_place(norm, result)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(result, expected)
    assert largest.elements == 4 * 4 * 16 * 16  # parts of four groups of four channels
