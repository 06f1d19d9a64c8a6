"""Each stage's peak memory, in the run's metrics: what this process needed, stage by stage.

`memory/<stage>_peak_rss_gib` is the largest resident set of this process (rank 0's, which writes the
metrics) seen while the stage trained (or evaluation ran), read every `INTERVAL_S` by a background
thread (psutil); a spike shorter than the interval can be missed. The kernel's own high-water mark is
left alone: it can only be reset for the whole process (Linux `clear_refs`), which would also change
what `/usr/bin/time -v` and `getrusage` report. `memory/process_peak_rss_gib` is that exact peak of the
process when the metrics are written (loading, saving and anything else included; a process that ran
earlier jobs, as Hydra's basic launcher does, carries them). On a GPU also `memory/<stage>_peak_cuda_gib`
and `..._peak_cuda_reserved_gib`: torch's peak of allocated and of reserved (allocated plus the caching
allocator's slack) memory on the run's device during the stage, whose peak statistics are reset as the
stage starts. Several processes (DDP ranks, parallel sweep jobs) each need their own.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
from typing import Iterator, MutableMapping, Optional

import psutil
import torch

GIB = 2 ** 30
INTERVAL_S = 0.01


class RssSampler:
    """The largest RSS of this process seen between `start` and `stop`, read every `interval` seconds
    (None where psutil could not read it)."""

    def __init__(self, interval: float = INTERVAL_S):
        self.interval, self.process = interval, psutil.Process()
        self.peak: Optional[int] = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _read(self) -> None:
        if self.peak is None:
            return
        try:
            self.peak = max(self.peak, self.process.memory_info().rss)
        except psutil.Error:
            self.peak = None  # no figure rather than a wrong one, and the stage goes on

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def start(self) -> "RssSampler":
        self._read()
        self._thread.start()
        return self

    def stop(self) -> Optional[int]:
        self._stop.set()
        self._thread.join()
        self._read()
        return self.peak


def process_peak_rss_bytes() -> int:
    """The process's peak RSS since it started (`getrusage`: kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@contextlib.contextmanager
def stage_peak(metrics: MutableMapping[str, float], stage: str, device: torch.device) -> Iterator[None]:
    """Record the block's peak RSS, and on a CUDA `device` its peak allocated and reserved memory, as
    `memory/<stage>_peak_*_gib`. Nothing is recorded for a block that raises."""
    cuda = device.type == "cuda"
    if cuda:
        # CUDA's allocator exists only once CUDA is initialised: before the run's first CUDA work (its
        # first stage) a reset refuses the device ("Invalid device argument")
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    sampler = RssSampler().start()
    try:
        yield
    finally:
        peak = sampler.stop()
    if peak is not None:
        metrics[f"memory/{stage}_peak_rss_gib"] = peak / GIB
    if cuda:
        metrics[f"memory/{stage}_peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        metrics[f"memory/{stage}_peak_cuda_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
