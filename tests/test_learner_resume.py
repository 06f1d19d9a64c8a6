"""A critic-free learner with the adaptive KL coefficient, killed during RL: its resume checkpoint holds
no critic (weights or optimizer) and the KL coefficient, and the same command ends with the metrics of
a run that was never interrupted (CPU, deterministic mode)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.csv_log import logged
from tests.test_resume import comparable

ROOT = Path(__file__).resolve().parents[1]
# horizon 10 responses: beta moves by up to 20 % x 8 / 10 per iteration, visibly
ARGS = ["debug=tiny", "deterministic=true", "threads=1", "logger=csv", "algo=grpo", "kl_ctl=adaptive",
        "kl_ctl.horizon=10", "ppo.iterations=4", "ppo.val_every=null", "algo.samples_per_prompt=2"]


def command(run_dir: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "rto.main", *ARGS, f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"]


def run_to_end(run_dir: Path, cache: Path) -> dict:
    result = subprocess.run(command(run_dir, cache), cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}


def kill_after_first_rl_checkpoint(run_dir: Path, cache: Path) -> Path:
    proc = subprocess.Popen(command(run_dir, cache), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    resume_dir = run_dir / "checkpoints" / "ppo-resume"
    deadline = time.monotonic() + 600
    try:
        while not list(resume_dir.glob("*.ckpt.json")):
            assert proc.poll() is None, f"the run ended (rc={proc.returncode}) before an RL checkpoint appeared"
            assert time.monotonic() < deadline, "no resume checkpoint in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it was killed"
    (sidecar,) = resume_dir.glob("*.ckpt.json")
    return sidecar.with_suffix("")


def test_critic_free_learner_with_adaptive_kl_resumes_to_the_same_metrics(tmp_path):
    cache = tmp_path / "cache"  # shared: the second and third runs load SFT, RM and DPO from it
    expected = run_to_end(tmp_path / "uninterrupted", cache)
    betas = logged(tmp_path / "uninterrupted", "ppo/kl_coef")
    assert len(betas) == 4 and betas[0] == pytest.approx(0.1) and len(set(betas)) == 4  # it adapted

    ckpt = kill_after_first_rl_checkpoint(tmp_path / "killed", cache)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not any(key.startswith("critic") for key in state["state_dict"])  # no critic was built or saved
    assert any(key.startswith("actor.") for key in state["state_dict"])
    assert len(state["optimizer_states"]) == 1  # the actor's only
    assert state["rto_ppo"]["kl_ctl"]["value"] == pytest.approx(betas[1])  # the coefficient iteration 2 uses

    resumed, expected = comparable(run_to_end(tmp_path / "killed", cache)), comparable(expected)
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        assert resumed[key] == pytest.approx(value, abs=1e-9, rel=0), key
    assert logged(tmp_path / "killed", "ppo/kl_coef")[-1] == pytest.approx(betas[-1], abs=1e-12)
