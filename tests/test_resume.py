"""Kill -9 a real run during DPO, then during PPO; the same command resumes and ends with the metrics
of a run that was never interrupted (CPU, deterministic mode)."""

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
from safetensors.torch import load_file

from rto.report.jobs import read_curves

ROOT = Path(__file__).resolve().parents[1]
# small but with several resume checkpoints per stage: 12 DPO steps, 6 PPO iterations
ARGS = ["debug=tiny", "deterministic=true", "threads=1", "logger=csv", "dpo.epochs=3", "ppo.iterations=6",
        "resume.every_n_steps=1"]
# bit-for-bit equality is expected; this only absorbs float printing
TOLERANCE = 1e-9


def command(run_dir: Path, *extra: str) -> list[str]:
    # a cache of its own per run: a stage reused from another run would never be interrupted
    return [sys.executable, "-m", "rto.main", *ARGS, *extra, f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={run_dir}/cache"]


def env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}


def run_to_end(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command(run_dir, *extra), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_when_resumable(run_dir: Path, stage: str, *extra: str, timeout: float = 600) -> None:
    """Start the run and SIGKILL it as soon as `stage` has a complete resume checkpoint."""
    proc = subprocess.Popen(command(run_dir, *extra), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    resume_dir = run_dir / "checkpoints" / f"{stage}-resume"
    deadline = time.monotonic() + timeout
    try:
        while not list(resume_dir.glob("*.ckpt.json")):
            assert proc.poll() is None, f"the run ended (rc={proc.returncode}) before a {stage} checkpoint appeared"
            assert time.monotonic() < deadline, "no resume checkpoint in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it was killed"
    assert not (run_dir / "checkpoints" / stage).exists(), f"{stage} finished before the kill"


def comparable(metrics: dict) -> dict:
    # timings differ, and whether a stage came from the cache is bookkeeping, not a result
    return {k: v for k, v in metrics.items() if not k.startswith(("time/", "cache/", "memory/"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(out)
    return out


def test_kill_during_dpo_then_ppo_resumes_to_the_same_metrics(uninterrupted, tmp_path):
    kill_when_resumable(tmp_path, "dpo")
    assert (tmp_path / "checkpoints" / "rm").is_dir()  # finished stages survive the kill
    kill_when_resumable(tmp_path, "ppo")
    assert (tmp_path / "checkpoints" / "dpo").is_dir()
    assert not (tmp_path / "checkpoints" / "dpo-resume").exists()  # cleared once the stage finished
    result = run_to_end(tmp_path)
    log = result.stdout + result.stderr
    assert "dpo: loading" in log and "resuming from" in log and "ppo-resume" in log
    resumed = comparable(json.loads((tmp_path / "metrics.json").read_text()))
    expected = comparable(json.loads((uninterrupted / "metrics.json").read_text()))
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        assert resumed[key] == pytest.approx(value, abs=TOLERANCE, rel=0), key
    assert not (tmp_path / "checkpoints" / "ppo-resume").exists()
    # the curves too, but for one point: Lightning hands a step's `self.log` values to the loggers after
    # the step's checkpoint, so the iteration the run was killed after is in no log (the resumed run starts
    # after it); every other point equals the uninterrupted run's
    (curve, _), (expected_curve, _) = (read_curves(run / "csv" / "metrics.csv") for run in (tmp_path, uninterrupted))
    assert len(set(expected_curve) - set(curve)) <= 1 and set(curve) <= set(expected_curve)
    for step, value in curve.items():
        assert value == pytest.approx(expected_curve[step], abs=TOLERANCE, rel=0), step


@pytest.mark.slow  # two runs, one killed: ~25 s; the automatic-optimisation resume stays in the default suite
def test_kill_during_dpo_with_micro_batches_resumes_to_the_same_weights(tmp_path):
    """Under manual optimisation (`dpo.micro_batch_size`) a resume checkpoint counts optimizer steps as
    the automatic one does: a run killed mid-DPO ends with the uninterrupted run's DPO weights and metrics."""
    micro = ("sft.micro_batch_size=5", "rm.micro_batch_size=7", "dpo.micro_batch_size=10")
    whole, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    run_to_end(whole, *micro)
    kill_when_resumable(killed, "dpo", *micro)
    log = run_to_end(killed, *micro)
    assert "resuming from" in log.stdout + log.stderr
    expected, resumed = (load_file(run / "checkpoints" / "dpo" / "model.safetensors") for run in (whole, killed))
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name
    assert comparable(json.loads((killed / "metrics.json").read_text())) == \
        comparable(json.loads((whole / "metrics.json").read_text()))


def test_the_logs_are_on_disk_before_each_resume_checkpoint(tmp_path):
    """Lightning's CSV logger holds up to 100 steps in memory; a run killed after a checkpoint resumes
    after it and never logs those steps again, so they are written out first."""
    from types import SimpleNamespace

    from rto.resume import resume_callback

    calls = []
    logger = SimpleNamespace(save=lambda: calls.append("logs saved"), after_save_checkpoint=lambda callback: None)
    trainer = SimpleNamespace(loggers=[logger], global_step=3, is_global_zero=True,
                              save_checkpoint=lambda path, weights_only: calls.append("checkpoint"))
    resume_callback(tmp_path, every_n_steps=1)._save_checkpoint(trainer, str(tmp_path / "x.ckpt"))
    assert calls == ["logs saved", "checkpoint"]
