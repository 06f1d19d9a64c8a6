"""Each stage's peak memory (`rto/peak_memory.py`): the peak of the block, not of the process so far,
and the process's own high-water mark left as it is; the pipeline records it per stage
(tests/test_pipeline.py)."""

from __future__ import annotations

import resource
import threading
import time

import torch

from rto.peak_memory import GIB, stage_peak

MIB = 2 ** 20


def test_a_block_records_its_own_peak_and_leaves_the_process_peak_alone():
    metrics = {}
    with stage_peak(metrics, "big"):
        block = torch.ones(384 * MIB // 4)  # 384 MiB, written, so resident
        time.sleep(0.1)  # held for ten of the sampler's intervals
        del block
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with stage_peak(metrics, "small"):
        pass
    big, small = metrics["memory/big_peak_rss_gib"], metrics["memory/small_peak_rss_gib"]
    assert big * GIB >= 384 * MIB
    assert small * GIB < big * GIB - 256 * MIB  # the freed block is not in the second block's peak
    # what /usr/bin/time -v and getrusage report for the run is not reset by a stage
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >= process_peak


def test_a_failed_stage_records_nothing_and_stops_its_sampler():
    metrics = {}
    try:
        with stage_peak(metrics, "failed"):
            raise KeyError("x")
    except KeyError:
        pass
    assert "memory/failed_peak_rss_gib" not in metrics
    assert not any(t.name == "rss-sampler" for t in threading.enumerate())
