"""What this machine computes with, decided in one place: device, precision, memory, and what a cell
records about it.

A CPU's bf16 path is only fast where the CPU has native bf16 matrix units (AVX-512 BF16 or AMX, as
oneDNN reports them); elsewhere bf16 matmuls are emulated and run about 80x slower than fp32 (AVX2
EPYC: 1.3 against 100 GFLOP/s), so bf16 is chosen only where it is native.
"""

from __future__ import annotations

import os
import platform
from typing import Any


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_native_bf16() -> bool:
    """True where oneDNN has native bf16 kernels on this CPU (AVX-512 BF16, AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16() -> bool:
    """True where this machine's device (the GPU if there is one, else the CPU) computes bf16 natively."""
    import torch

    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cpu_native_bf16()


def train_precision(requested: str = "auto") -> str:
    """The precision training computes in. `auto`: bf16 where the device has it natively (autocast, fp32
    master weights for what trains), fp16 on a GPU without bf16, else fp32. `fp32` or `bf16` as asked
    (check_precision refuses bf16 where it would be emulated)."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_native_bf16() else "fp32"


def check_precision(requested: str) -> None:
    """bf16 asked for where it is not native: emulated bf16 matmuls run ~80x slower than fp32, so refuse
    before anything is loaded rather than train for days."""
    import torch

    if requested != "bf16":
        return
    if torch.cuda.is_available():
        if not torch.cuda.is_bf16_supported():
            raise ValueError("precision: bf16 asked for, but this GPU has no bf16; use precision: auto (fp16 here) or fp32")
    elif not cpu_native_bf16():
        raise ValueError("precision: bf16 asked for, but this CPU has no native bf16 (AVX-512 BF16 or AMX): it would "
                         "be emulated, ~80x slower than fp32; use precision: auto or fp32 on this machine")


def inference_dtype():
    """bf16 on a GPU that has it, else fp32: the precision every inference backend uses here. A CPU keeps
    fp32 even with native bf16, so greedy answers stay those of the reference precision; see
    benchmarks/eval_speed.py for what bf16 changes there."""
    import torch

    return torch.bfloat16 if device() == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def available_memory_bytes() -> int:
    """Free memory on the device training would use: the GPU's, else the machine's available RAM."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def empty_device_cache() -> None:
    """Hand freed GPU memory back, so the next engine in this process can claim it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_info() -> dict[str, Any]:
    """The device this process computes on; with CUDA, which GPUs it was given (Ray sets CUDA_VISIBLE_DEVICES)."""
    try:
        import torch
    except ImportError:
        return {"type": "cpu"}
    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "host": platform.node()}
    return {"type": "cpu", "threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
            "capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_native_bf16(),
            "host": platform.node()}
