"""Which precisions this CPU computes natively, and the warning for one it only emulates."""

from __future__ import annotations

import torch


def native_cpu_precision(dtype: torch.dtype) -> bool | None:
    """Whether this CPU computes ``dtype`` natively in oneDNN (bf16: AVX512-BF16 or AMX; fp16:
    AVX512-FP16 or AMX-FP16); None where this build of torch cannot tell. fp32 always."""
    probes = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    if dtype not in probes:
        return True
    probe = getattr(torch.ops.mkldnn, probes[dtype], None)
    return bool(probe()) if probe is not None else None


NATIVE_FEATURES = {torch.bfloat16: ("bf16", "AVX512-BF16 or AMX"), torch.float16: ("fp16", "AVX512-FP16 or AMX-FP16")}
"""Each half precision's name and the CPU features that compute it natively in oneDNN."""


def slow_precision_warning(dtype: torch.dtype, device: torch.device | str) -> str | None:
    """The warning for a half precision chosen on a CPU that has no native support for it, or None.

    There torch emulates it: on a 2-core AVX2 CPU (no AVX512) a bf16 3x3 convolution of the U-Net's
    (320 channels, 64x64, batch 2) took 1.0 s channels-last and 31 s channels-first against 0.2 s
    in fp32, and a 320->2560 linear layer 0.9 s against 0.15 s."""
    if torch.device(device).type != "cpu" or native_cpu_precision(dtype) is not False:
        return None
    name, features = NATIVE_FEATURES[dtype]
    return (f"{name} on this CPU is emulated (native {name} needs {features}, which it lacks), which makes an edit "
            f"many times slower than fp32, not faster: choose fp32 (or auto) on this machine.")
