"""benchmarks/gpu_bench.py on a CPU (`--smoke`): the script a GPU session runs once must work the
first time, so its figures are checked here on tiny models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a benchmark script's smoke run: kept out of the default suite's 15 minutes
def test_gpu_bench_smoke_counts_flops_forces_the_length_and_checks_the_ratio(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--out", str(tmp_path), "--smoke",
                             "--works", "ppo_token,dpo"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "peak.json").read_text())["measured_tflops"] > 0
    ppo = json.loads((tmp_path / "smoke_ppo_token.json").read_text())
    assert "error" not in ppo, ppo
    assert ppo["iterations_timed"] == 2 and ppo["flops_per_iteration"] > 0
    assert ppo["rollout_tokens"] == [4 * 8, 4 * 8]  # 4 prompts x 8 tokens: no response ends early
    assert ppo["first_minibatch_ratio_error"] <= 1e-5
    dpo = json.loads((tmp_path / "smoke_dpo.json").read_text())
    assert "error" not in dpo, dpo
    assert dpo["flops_per_iteration"] > 0


@pytest.mark.slow  # every variant of the script at tiny size, FSDP over 2 gloo ranks: about a minute
def test_gpu_pipeline_check_smoke_runs_every_variant_and_writes_plain_checkpoints(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/gpu_pipeline_check.py", "--out", str(tmp_path / "out"),
                             "--work", str(tmp_path / "work"), "--smoke"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = json.loads((tmp_path / "out" / "gpu_pipeline_check.json").read_text())
    assert [(s["name"], s["step"]) for s in steps] == [("gpu_default_token", 0), ("gpu_lora_real_data", 0)] + [
        ("fsdp_stages_then_gpu", i) for i in range(4)]
    last = steps[-1]
    assert last["first_minibatch"]["ratio"] <= 1e-5 and "eval/policy/gold_reward" in last["metrics"]
    assert set(last["checkpoints"]) == {"sft", "rm", "dpo", "ppo", "critic"}
    assert not any(stage["fsdp_names"] for step in steps for stage in step["checkpoints"].values())
