"""Measurement plumbing shared by ``accel bench`` and the scripts under ``scripts/``.

- ``environment()``: what every results file must name — device, versions, dtype, date, command;
- ``time_ms(fn)``: warm-up, then the median of several runs, timed with CUDA events on a GPU (device
  work is asynchronous) and ``perf_counter`` on the CPU;
- ``copy_bandwidth_gbs()``: the machine's measured device-to-device copy bandwidth, the ceiling that
  bandwidth-utilisation figures divide by (datasheet rates are only leads);
- ``write_json()``: atomic results files.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from ..runtime.files import atomic_write

__all__ = ["environment", "time_ms", "copy_bandwidth_gbs", "write_json", "synchronize"]


def synchronize(device=None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def environment(command: str | None = None) -> dict:
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
    }
    try:
        from importlib.metadata import version

        env["accel"] = version("accel")
    except Exception:
        env["accel"] = None
    return env


def time_ms(fn, *, warmup: int = 3, rep: int = 10, device=None) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    for _ in range(warmup):
        fn()
    synchronize(device) if cuda else None
    times = []
    for _ in range(rep):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(size_mb: int = 2048) -> float | None:
    """Device-to-device copy bandwidth (bytes read + bytes written per second), in GB/s."""
    if not torch.cuda.is_available():
        return None
    n = size_mb * 1024 * 1024 // 4
    src = torch.randn(n, device="cuda")  # never zeros: they can be faster than real data
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), warmup=3, rep=20)
    del src, dst
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def write_json(path: str | os.PathLike, data: dict) -> Path:
    return atomic_write(path, json.dumps(data, indent=2, default=str) + "\n", create_parents=True)
