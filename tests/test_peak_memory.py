"""Each stage's peak memory (`rto/peak_memory.py`): the peak of the block, not of the process so far,
and the process's own high-water mark left as it is; on a GPU the run's device's peaks; the pipeline
records it per stage (tests/test_pipeline.py)."""

from __future__ import annotations

import resource
import threading
import time

import psutil
import torch

from rto import peak_memory
from rto.peak_memory import GIB, stage_peak

MIB = 2 ** 20
CPU = torch.device("cpu")


def test_a_block_records_its_own_peak_and_leaves_the_process_peak_alone():
    metrics = {}
    with stage_peak(metrics, "big", CPU):
        block = torch.ones(384 * MIB // 4)  # 384 MiB, written, so resident
        time.sleep(0.1)  # held for ten of the sampler's intervals
        del block
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with stage_peak(metrics, "small", CPU):
        pass
    big, small = metrics["memory/big_peak_rss_gib"], metrics["memory/small_peak_rss_gib"]
    assert big * GIB >= 384 * MIB
    assert small * GIB < big * GIB - 256 * MIB  # the freed block is not in the second block's peak
    # what /usr/bin/time -v and getrusage report for the run is not reset by a stage
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >= process_peak
    assert not any(key.startswith("memory/big_peak_cuda") for key in metrics)  # a CPU run has no CUDA keys


def test_a_failed_stage_records_nothing_and_stops_its_sampler():
    metrics = {}
    try:
        with stage_peak(metrics, "failed", CPU):
            raise KeyError("x")
    except KeyError:
        pass
    assert "memory/failed_peak_rss_gib" not in metrics
    assert not any(t.name == "rss-sampler" for t in threading.enumerate())


def test_an_unreadable_rss_gives_no_figure_and_the_stage_goes_on(monkeypatch):
    def unreadable(self):
        raise psutil.AccessDenied()
    monkeypatch.setattr(psutil.Process, "memory_info", unreadable)
    metrics = {}
    with stage_peak(metrics, "stage", CPU):
        pass
    assert "memory/stage_peak_rss_gib" not in metrics


def test_on_a_gpu_the_runs_own_device_is_reset_and_read(monkeypatch):
    """The run's device (cuda:1 here), not the current one: before any `fit` sets it, the current
    device is cuda:0 whichever GPU the run was given. CUDA is initialised first: before a process's
    first CUDA work torch refuses to reset a device's peak ("Invalid device argument", seen on an H100)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append(("init", None)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: calls.append(("allocated", device)) or GIB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: calls.append(("reserved", device)) or 2 * GIB)
    gpu = torch.device("cuda", 1)
    metrics = {}
    with stage_peak(metrics, "ppo", gpu):
        pass
    assert calls == [("init", None), ("reset", gpu), ("allocated", gpu), ("reserved", gpu)]
    assert metrics["memory/ppo_peak_cuda_gib"] == 1.0 and metrics["memory/ppo_peak_cuda_reserved_gib"] == 2.0


def test_the_process_peak_is_getrusages():
    assert peak_memory.process_peak_rss_bytes() >= psutil.Process().memory_info().rss * 0.99
