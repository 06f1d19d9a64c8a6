"""Each stage's peak memory (`rto/peak_memory.py`): the peak of the block, not of the process so far,
where Linux lets the high-water mark be reset; the pipeline records it per stage (tests/test_pipeline.py)."""

from __future__ import annotations

import pytest
import torch

from rto import peak_memory
from rto.peak_memory import GIB, rss_peak_bytes, stage_peak

MIB = 2 ** 20


def test_a_block_records_its_own_peak():
    metrics = {}
    with stage_peak(metrics, "big"):
        block = torch.ones(384 * MIB // 4)  # 384 MiB, written, so resident
        del block
    with stage_peak(metrics, "small"):
        pass
    big, small = metrics["memory/big_peak_rss_gib"], metrics["memory/small_peak_rss_gib"]
    assert big * GIB >= 384 * MIB
    if "memory/peak_is_cumulative" in metrics:
        pytest.skip("this system cannot reset the peak RSS: the second block reports the process's peak")
    assert small * GIB < big * GIB - 256 * MIB  # the freed block is not in the second block's peak


def test_without_a_resettable_peak_the_metrics_say_it_is_cumulative(monkeypatch, tmp_path):
    monkeypatch.setattr(peak_memory, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    monkeypatch.setattr(peak_memory, "_STATUS", tmp_path / "missing" / "status")
    metrics = {}
    with stage_peak(metrics, "stage"):
        pass
    assert metrics["memory/peak_is_cumulative"] == 1.0
    recorded = metrics["memory/stage_peak_rss_gib"] * GIB
    assert 0 < recorded <= rss_peak_bytes() < recorded + 64 * MIB  # getrusage's peak of the process
