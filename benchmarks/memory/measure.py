"""Peak memory of a real run: the CPU allocator's own events (``torch.profiler``), or CUDA's allocator statistics.

:func:`cpu_peak_bytes` profiles ``fn()`` with ``profile_memory=True``: the profiler records every allocation and
free of PyTorch's CPU allocator (``[memory]`` events with a signed byte count, operator workspaces included), and
the peak is the largest running sum. It is independent of :class:`memory.tracker.LiveStorageTracker`, which is
what the validation compares it with. :func:`cuda_peak_bytes` is the same on a GPU from
``torch.cuda.max_memory_allocated``.

Examples:
    >>> weights = torch.empty(1024)
    >>> cpu_peak_bytes(lambda: (weights * 2).sum()) >= 4096   # one 4 KiB temporary, then the sum
    True
"""

from __future__ import annotations

import gc
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["cpu_peak_bytes", "cuda_peak_bytes"]


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Largest number of bytes the CPU allocator held during ``fn()`` on top of what it held before (the result
    stays alive until ``fn`` returns, so it counts)."""
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda event: event[0])
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device) -> tuple[int, int]:
    """``(peak, before)``: ``torch.cuda.max_memory_allocated`` over ``fn()`` and ``memory_allocated`` before it."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device), before
