"""Each stage's peak memory, in the run's metrics: what a machine needs, stage by stage.

`memory/<stage>_peak_rss_gib` is the largest resident set of the process seen during the stage, read
every `INTERVAL_S` by a background thread (psutil). The kernel's own high-water mark is left alone: it
can only be reset for the whole process (Linux `clear_refs`), which would also change what
`/usr/bin/time -v` and `getrusage` report for the run. A spike shorter than the interval can be missed.
On a GPU also `memory/<stage>_peak_cuda_gib`, torch's peak of allocated memory on the run's device
during the stage. The stages run one after another in a process, so the largest of these is about what
the run needed; the formula of docs/MEMORY.md estimates the PPO stage's share.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, MutableMapping

import psutil
import torch

GIB = 2 ** 30
INTERVAL_S = 0.01


class RssSampler:
    """The largest RSS of this process seen between `start` and `stop`, read every `interval` seconds."""

    def __init__(self, interval: float = INTERVAL_S):
        self.interval, self.process = interval, psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _read(self) -> None:
        self.peak = max(self.peak, self.process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def start(self) -> "RssSampler":
        self._read()
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self._read()
        return self.peak


@contextlib.contextmanager
def stage_peak(metrics: MutableMapping[str, float], stage: str) -> Iterator[None]:
    """Record the block's peak RSS (and CUDA peak, where CUDA is in use) as `memory/<stage>_peak_*_gib`."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    sampler = RssSampler().start()
    try:
        yield
    finally:
        peak = sampler.stop()
    metrics[f"memory/{stage}_peak_rss_gib"] = peak / GIB
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        metrics[f"memory/{stage}_peak_cuda_gib"] = torch.cuda.max_memory_allocated() / GIB
