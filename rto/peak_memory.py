"""Each stage's peak memory, in the run's metrics: what a machine needs, stage by stage.

`memory/<stage>_peak_rss_gib` is the process's peak resident set during the stage (its high-water mark
reset as the stage starts: Linux's `/proc/self/clear_refs`; where that cannot be written, the process's
peak so far, which only grows, and `memory/peak_is_cumulative` = 1 says so). On a GPU also
`memory/<stage>_peak_cuda_gib`, torch's peak of allocated memory on the run's device during the stage.
The stages run one after another in a process, so the largest of these is what the run needed; the
formula of docs/MEMORY.md estimates the PPO stage's share.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path
from typing import Iterator, MutableMapping

import torch

GIB = 2 ** 30
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_rss_peak() -> bool:
    """Set this process's peak RSS to its current RSS (Linux: writing 5 to clear_refs); False where it
    cannot be reset."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def rss_peak_bytes() -> int:
    """The process's peak RSS since the last reset (VmHWM), else since it started (getrusage)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


@contextlib.contextmanager
def stage_peak(metrics: MutableMapping[str, float], stage: str) -> Iterator[None]:
    """Record the block's peak RSS (and CUDA peak, where CUDA is in use) as `memory/<stage>_peak_*_gib`."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if not reset_rss_peak():
        metrics["memory/peak_is_cumulative"] = 1.0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    yield
    metrics[f"memory/{stage}_peak_rss_gib"] = rss_peak_bytes() / GIB
    if cuda or (torch.cuda.is_available() and torch.cuda.is_initialized()):
        metrics[f"memory/{stage}_peak_cuda_gib"] = torch.cuda.max_memory_allocated() / GIB
