"""Device and numeric-precision choices, made once per run.

"auto" settings follow measurements rather than habit: on a CPU with native bf16 (AVX512-BF16/AMX)
a DCGAN step ran ~2.3x faster under bf16 autocast with channels-last tensors than in plain fp32, and on
CUDA bf16 autocast plus TF32 matmuls is the usual fast path. bf16 changes GAN numerics (8-bit mantissa
in activations), so ``precision="fp32"`` always remains available.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from .errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device: cannot parse {name!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 kernels natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto" | "fp32" | "bf16"); None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ConfigError(f"precision: expected auto, fp32 or bf16, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def resolve_channels_last(flag: str | bool, device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """channels_last helps convolutions on CUDA and on CPUs running bf16; "auto" picks it there."""
    if isinstance(flag, bool):
        return flag
    if flag != "auto":
        raise ConfigError(f"channels_last: expected auto, true or false, got {flag!r}")
    return device.type == "cuda" or (device.type == "cpu" and amp_dtype is not None)


def enable_fast_math(device: torch.device) -> None:
    """TF32 for fp32 matmuls/convolutions on CUDA (no effect elsewhere); cuDNN autotuning on."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Mixed-precision region when ``dtype`` is set, a no-op otherwise."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def describe(device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool) -> str:
    """One line for logs: where and how a run computes."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    precision = "bf16 autocast" if amp_dtype is torch.bfloat16 else "fp32"
    layout = "channels_last" if channels_last else "contiguous"
    return f"{device.type} ({name}), {precision}, {layout}"


def busy_cpu_warning(device: torch.device, threads: int | None = None, busy_cores: float | None = None,
                     cores: int | None = None) -> str | None:
    """A one-line warning when a multi-threaded CPU run starts on cores other jobs already use.

    PyTorch's intra-op threads wait for each other at every operation; with another process on the
    cores they wait for a thread that is not scheduled, and a run can be 10x or more slower (measured
    on a 2-core machine: a 2-thread main job next to one single-thread training job had not finished
    its first epoch after 13 minutes; idle, it trains 12 epochs in under 5). ``busy_cores`` is how many
    cores are in use before this run computes anything: ``psutil.cpu_percent`` over 0.25 s (a short
    sample, not the load average, which still remembers the previous notebook of the same pipeline).
    Warn when it is at least 0.75 and, with this run's threads, exceeds the cores. ``threads`` and
    ``cores`` default to ``torch.get_num_threads()`` and ``os.cpu_count()``. None on CUDA, at one
    thread (nothing is sampled then), or when the cores are free.
    """
    if device.type != "cpu":
        return None
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 2:
        return None
    cores = (os.cpu_count() or 1) if cores is None else cores
    if busy_cores is None:
        import psutil

        busy_cores = psutil.cpu_percent(interval=0.25) / 100 * cores
    if busy_cores < 0.75 or busy_cores + threads <= cores + 0.5:
        return None
    return (f"warning: {busy_cores:.1f} of {cores} CPU cores are busy with other jobs and this run uses {threads} "
            "threads; threads waiting on each other can make it many times slower: give each job one thread "
            "(OMP_NUM_THREADS=1) or wait for the other jobs")
