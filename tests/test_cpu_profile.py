"""The CPU speed scripts at smoke size: `benchmarks/profile_iteration.py --smoke` (one real PPO iteration
of the tiny preset under bf16-mixed, broken into phases that add up to the iteration, with the torch
profiler's operators and the FLOPs of each phase) and `benchmarks/amx_check.py`."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
from profile_iteration import PARTS  # noqa: E402


@pytest.mark.slow  # a benchmark script's smoke run: kept out of the default suite's 15 minutes
def test_profile_smoke_breaks_an_iteration_into_phases_that_add_up(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(BENCH / "profile_iteration.py"), "--smoke", "--torch-profile",
                          "--precision", "bf16-mixed", "--threads", "1", "--json", str(tmp_path / "profile.json")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "profile.json").read_text())
    times = result["times"][0]
    for phase, parts in PARTS.items():
        assert times[phase] > 0 and times[f"{phase}/other"] >= 0, phase
        for part in parts:  # reward=token: every model reads the rollout; bf16: pi_old is a forward of its own
            assert 0 < times[part] <= times[phase], part
    assert times["other"] >= 0
    # the smoke's shapes: 6 new tokens (a prefill and 5 decoding forwards), 1 epoch of 2 minibatches
    calls = result["calls"]
    assert (calls["sampling/prefill"], calls["sampling/decode_forward"], calls["update/backward"]) == (1, 5, 2)
    assert abs(sum(times[p] for p in PARTS) + times["other"] - times["iteration"]) < 1e-6
    # the first decoding step's operators, and the FLOPs of the backward and of a frozen forward
    assert any("mm" in op or "linear" in op for op, _ in result["top_ops"]["sampling/decode_forward"])
    assert result["flops"]["update/backward"] > 0 and result["flops"]["experience/reference"] > 0
    assert "| iteration |" in out.stdout and "decode_forward" in out.stdout


def test_amx_check_reports_both_throughputs_and_the_onednn_kernel():
    out = subprocess.run([sys.executable, str(BENCH / "amx_check.py"), "--threads", "1", "--n", "256"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "GFLOP/s, bf16" in out.stdout and "oneDNN kernel of a bf16 linear layer:" in out.stdout
    assert "AMX: " in out.stdout
