"""Our side of `benchmarks/vs_trl.py` runs: the worker builds the real modules from `conf/` at the
benchmark's shapes and reports step times through the pause-and-time protocol. (TRL's side needs
its own virtualenv and is not run here; the parity script runs where that virtualenv exists.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
from shapes import write_fixtures  # noqa: E402
from step_clock import TIMES_PREFIX  # noqa: E402


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    spec = {**write_fixtures(folder / "fixtures", n_prompts=64), "threads": 1, "seed": 0, "total_steps": 3}
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize("work, overrides", [("ppo_token", []), ("dpo", ["dpo.precompute_ref=false"]),
                                             ("grpo", []), ("rl", ["algo=reinforce_pp", "reward=token"])])
def test_our_benchmark_worker_times_real_steps(spec_path, work, overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(BENCH / "ours_worker.py"), work, str(spec_path), *overrides],
                         input="run 2\nstop\n", capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(TIMES_PREFIX)]
    assert lines, out.stdout[-2000:] + out.stderr[-3000:]
    times = json.loads(lines[0][len(TIMES_PREFIX):])
    assert len(times) == 2 and all(t > 0 for t in times)


@pytest.mark.skipif(not (BENCH / ".venv-trl" / "bin" / "python").exists(),
                    reason="TRL's virtualenv is absent (`python benchmarks/vs_trl.py --quick` creates it)")
def test_trl_parity_script_finds_our_ppo_numbers_equal_to_trls(tmp_path):
    """`benchmarks/trl_parity.py`: GAE advantages, returns, policy and value losses against TRL 0.23.1's
    own code on one fixed batch (needs TRL's virtualenv, which this suite does not create)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(BENCH / "trl_parity.py"), "--out", str(tmp_path / "parity.md")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "parity.json").read_text())
    checked = [r for r in results if r["ok"] is not None]
    assert checked and all(r["ok"] for r in checked)
    assert any(r["rows_ending_early"] for r in checked) and all(r["clipfrac"] > 0 for r in checked)
