"""The real entry point through every stage, at tiny sizes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rto.main import train
from rto.pipeline import MissingStageError
from tests.conftest import compose_config
from tests.csv_log import logged_in_every_run as logged

ROOT = Path(__file__).resolve().parents[1]
EVAL_KEYS = ("gold_reward", "gold_reward_stderr", "kl", "win_rate", "tie_rate", "rm_score")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One full token-reward run; other tests reuse its checkpoints."""
    out = tmp_path_factory.mktemp("full")
    cfg = compose_config("reward=token", "logger=default", output_dir=out)
    value = train(cfg)
    return out, value


def test_full_run_writes_table_metrics_and_checkpoints(finished_run):
    out, value = finished_run
    metrics = json.loads((out / "metrics.json").read_text())
    for policy in ("sft", "dpo", "policy"):
        for key in EVAL_KEYS:
            assert f"eval/{policy}/{key}" in metrics
    assert value == metrics["eval/policy/gold_reward"]
    # the SFT row plays SFT against an independent SFT draw: a null check, about 0.5 with few ties (one
    # shared random stream would make every pair tie and the win rate exactly 0.5)
    assert metrics["eval/sft/tie_rate"] < 1.0
    cfg = compose_config(output_dir=out)
    n_prompts = cfg.eval.n_prompts or cfg.data.n_test_prompts  # one prompt's worth of slack: wins are discrete
    assert abs(metrics["eval/sft/win_rate"] - 0.5) <= 3 * metrics["eval/sft/win_rate_stderr"] + 1 / n_prompts
    # the KL is measured against SFT (the reference): 0 for SFT itself, not for the policy DPO moved
    assert metrics["eval/sft/kl"] == 0.0 and metrics["eval/dpo/kl"] != 0.0
    assert 0.0 <= metrics["rm/val_accuracy"] <= 1.0
    # every stage's peak memory (rto/peak_memory.py): the process's resident set during it, here at least
    # the interpreter with torch loaded
    for stage in ("sft", "rm", "dpo", "ppo", "eval"):
        assert 0.1 < metrics[f"memory/{stage}_peak_rss_gib"] <= metrics["memory/process_peak_rss_gib"] + 0.01, stage
    assert metrics["memory/process_peak_rss_gib"] < 64
    table = (out / "eval_table.md").read_text()
    assert "| SFT |" in table and "| DPO |" in table and "| RTO (token) |" in table
    for stage in ("sft", "rm", "dpo", "ppo"):
        assert (out / "checkpoints" / stage / "config.json").exists()
    assert (out / "checkpoints" / "rm" / "scalar_head.safetensors").exists()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["policy"] for s in samples} == {"sft", "dpo", "policy"}


def test_loggers_receive_ppo_diagnostics(finished_run):
    out, _ = finished_run
    with open(out / "csv" / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    for key in ("sft/loss", "rm/loss", "dpo/loss", "ppo/kl_k1", "ppo/kl_k3", "ppo/clipfrac", "ppo/entropy",
                "ppo/explained_variance", "ppo/response_length", "ppo/samples_per_second", "ppo/rollout_tokens_per_second", "ppo/gold_reward",
                "ppo/dpo_reward", "eval/policy/gold_reward"):
        assert key in columns, key
    offline_runs = list((out / "wandb").glob("offline-run-*"))
    assert offline_runs, "W&B should write an offline run into the run folder"


def test_rerun_reuses_finished_stages(finished_run, tmp_path):
    out, _ = finished_run
    stamp = {s: (out / "checkpoints" / s / "model.safetensors").stat().st_mtime_ns for s in ("sft", "dpo", "ppo")}
    train(compose_config("reward=token", "stage=eval", output_dir=out))
    for stage, mtime in stamp.items():
        assert (out / "checkpoints" / stage / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("reward", ["sentence", "ddpo", "semi_window", "shaping"])
def test_each_reward_variant_trains_ppo_from_shared_checkpoints(finished_run, tmp_path, reward):
    out, _ = finished_run
    ckpt = out / "checkpoints"
    cfg = compose_config(f"reward={reward}", "stage=ppo", f"sft.checkpoint={ckpt / 'sft'}",
                         f"rm.checkpoint={ckpt / 'rm'}", f"dpo.checkpoint={ckpt / 'dpo'}", output_dir=tmp_path)
    train(cfg)
    assert (tmp_path / "checkpoints" / "ppo" / "model.safetensors").exists()
    assert not (tmp_path / "checkpoints" / "sft").exists()  # upstream stages were read, not retrained


def test_single_stages_chain_through_the_run_folder(tmp_path):
    for stage in ("sft", "rm", "dpo", "ppo", "eval"):
        train(compose_config("reward=sentence", f"stage={stage}", output_dir=tmp_path))
        if stage != "eval":
            assert (tmp_path / "checkpoints" / stage).is_dir()
    assert "eval/policy/gold_reward" in json.loads((tmp_path / "metrics.json").read_text())


def test_stage_without_its_inputs_names_the_missing_checkpoint(tmp_path):
    with pytest.raises(MissingStageError, match=r"needs the sft checkpoint.*stage=sft"):
        train(compose_config("stage=ppo", output_dir=tmp_path))


def test_cli_runs_the_default_entry_point(tmp_path):
    """`python -m rto.main` as a user types it, on the tiny preset."""
    result = subprocess.run(
        [sys.executable, "-m", "rto.main", "debug=tiny", "reward=token", "beta=0.1",
         f"hydra.run.dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| RTO (token) |" in result.stdout
    assert (tmp_path / "metrics.json").exists()


def test_validation_curve_is_logged_before_rl_and_at_the_last_iteration(finished_run):
    """The sample-efficiency curve: val/* at iteration 0 (the SFT policy) and at the last iteration
    (debug=tiny: 2 iterations of 8 responses, ppo.val_every=5), on the validation prompts."""
    from rto.data import load_data
    from rto.evaluation import sample_policy
    from rto.models import load_policy
    from rto.models.reward import judge_scorer

    out, _ = finished_run
    assert logged(out, "val/iteration") == [0.0, 2.0]
    assert logged(out, "val/sampled_responses") == [0.0, 16.0]
    cfg = compose_config("reward=token", output_dir=out)
    data = load_data(cfg.data)
    sft = load_policy(out / "checkpoints" / "sft", cfg.model).eval()
    rm = judge_scorer(str(out / "checkpoints" / "rm"), data.encoder, data.tokenizer)
    decode = lambda ids, mask: [data.tokenizer.decode(r[m.bool()].tolist()) for r, m in zip(ids, mask)]  # noqa: E731
    start = sample_policy(sft, sft, rm, data.val_prompts[:cfg.ppo.val_prompts], data.encoder,
                          batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                          temperature=cfg.eval.temperature, seed=cfg.eval.seed, decode=decode, gold=data.gold)
    assert logged(out, "val/gold_reward")[0] == pytest.approx(float(start.gold.mean()), abs=1e-9)
    assert logged(out, "val/kl")[0] == pytest.approx(0.0, abs=1e-6)
