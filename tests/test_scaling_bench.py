"""`benchmarks/scaling.py --smoke`: seconds per PPO iteration and peak RSS against model size and response
length, each point the real iteration in a fresh process, written as JSON, a markdown table and a plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import scaling  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("scaling")
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(BENCH / "scaling.py"), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "scaling.json").read_text()), out


@pytest.mark.slow  # a benchmark script's smoke run: kept out of the default suite's 15 minutes
def test_smoke_measures_both_series_in_fresh_processes(smoke):
    data, _ = smoke
    sizes, lengths = data["results"]["size"], data["results"]["length"]
    assert [p["name"] for p in sizes] == scaling.SMOKE["sizes"]
    assert [p["spec"]["new_tokens"] for p in lengths] == scaling.SMOKE["lengths"]
    for p in sizes + lengths:
        assert "error" not in p
        assert p["median"] > 0 and len(p["seconds"]) == scaling.SMOKE["shapes"]["repeats"]
        assert 100 < p["peak_rss_mib"] <= p["process_peak_rss_mib"]  # MiB: the interpreter alone is more than 100
        assert p["response_tokens"] == p["spec"]["new_tokens"]  # every response ran to the limit
    assert sizes[0]["parameters"] < sizes[1]["parameters"]
    # the size series' first point (tiny at 16 new tokens) is the length series' first: measured once
    assert sizes[0]["pid"] == lengths[0]["pid"]
    pids = {p["pid"] for p in sizes + lengths}
    assert len(pids) == 3 and os.getpid() not in pids
    assert "exponent" in sizes[1] and "exponent" in lengths[1] and "exponent" not in sizes[0]


@pytest.mark.slow  # a benchmark script's smoke run: kept out of the default suite's 15 minutes
def test_smoke_writes_the_table_and_the_plot(smoke):
    data, out = smoke
    md = (out / "scaling.md").read_text()
    assert "| tiny | " in md and "| small | " in md and "| 24 | " in md
    assert data["command"] in md
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_growth_exponent_is_the_log_log_slope_between_neighbours():
    points = [{"x": 1, "median": 2.0, "peak_rss_mib": 500.0}, {"x": 2, "median": 8.0, "peak_rss_mib": 500.0},
              {"error": "failed"}, {"x": 8, "median": 16.0, "peak_rss_mib": 1000.0}]
    scaling.exponents(points, lambda p: p["x"])
    assert "exponent" not in points[0]
    assert points[1]["exponent"] == pytest.approx(2.0) and points[1]["rss_exponent"] == pytest.approx(0.0)
    # a failed point is skipped: the next one is compared with the last that ran
    assert points[3]["exponent"] == pytest.approx(0.5) and points[3]["rss_exponent"] == pytest.approx(0.5)
