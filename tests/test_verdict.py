"""The PPO-vs-RTO verdict: tiny tuning and frontier multiruns through the real CLI, and the verdict
report on hand-made jobs whose numbers are computed here by hand."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rto.cache import StageCache
from rto.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_each_arm_is_tuned_with_two_trials_on_validation_prompts(tmp_path):
    out = tmp_path / "verdict"
    run("-m", "rto.verdict", "--steps", "tune", "--trials", "2", "--no-report", "--out", str(out), "--",
        "debug=tiny", f"paths.cache_dir={tmp_path / 'cache'}")
    best = json.loads((out / "protocol.json").read_text())["best"]
    assert set(best["ppo"]) == {"ppo.actor_optimizer.lr", "beta"}
    assert set(best["rto"]) == {"ppo.actor_optimizer.lr", "beta", "reward.dpo_scale", "reward.dpo_clip"}
    assert set(best["dpo"]) == {"dpo.optimizer.lr", "dpo.beta", "dpo.epochs"}
    for arm in ("ppo", "rto", "dpo"):
        jobs = sorted((out / "tune" / arm).glob("*/metrics.json"))
        assert len(jobs) == 2, arm
        for job in jobs:
            assert OmegaConf.load(job.parent / ".hydra" / "config.yaml").eval.prompt_set == "val"
    rto_logs = [(job / "main.log").read_text() for job in sorted((out / "tune" / "rto").glob("[0-9]*"))]
    assert "dpo: cache miss" in rto_logs[0] and "dpo: cache hit" in rto_logs[1]  # one DPO model for RTO's trials
    assert not list((out / "tune" / "ppo").glob("*/checkpoints/dpo"))  # PPO's reward never reads one


def test_frontier_sweeps_beta_on_one_dpo_model(tmp_path):
    run("-m", "rto.main", "-m", "experiment=beta_frontier", "debug=tiny", "seed=0", "beta=0.05,0.5",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.cache_dir={tmp_path / 'cache'}")
    jobs = [OmegaConf.load(p) for p in sorted((tmp_path / "sweep").glob("*/.hydra/config.yaml"))]
    assert sorted((j.reward.name, j.beta) for j in jobs) == [("sentence", 0.05), ("sentence", 0.5),
                                                              ("token", 0.05), ("token", 0.5)]
    assert {j.dpo.beta for j in jobs} == {0.1}
    assert len(list(StageCache(tmp_path / "cache").entries("dpo"))) == 1


# ---- the verdict report on hand-made jobs ------------------------------------------------------------
def write_job(folder: Path, cfg: dict, metrics: dict, val: list[dict] = ()) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "csv").mkdir()
    keys = sorted({k for row in val for k in row}) or ["step"]
    with open(folder / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(val)


def config(seed, reward="token", beta=0.1, dpo_beta=0.1):
    return {"seed": seed, "beta": beta, "reward": {"name": reward}, "dpo": {"beta": dpo_beta},
            "model": {"name": "tiny"}, "eval": {"prompt_set": "test"}}


def policy_metrics(prefix, gold, kl=1.0, rm=0.0):
    return {f"eval/{prefix}/gold_reward": gold, f"eval/{prefix}/kl": kl, f"eval/{prefix}/rm_score": rm,
            "eval/sft/gold_reward": -5.0, "eval/sft/kl": 0.0}


def curve(gold, fraction):
    return [{"val/sampled_responses": x, "val/gold_reward": g, "val/gold_fraction": f}
            for x, g, f in zip((0, 100, 200, 300), gold, fraction)]


@pytest.fixture
def verdict(tmp_path):
    out = tmp_path / "verdict"
    gold = {"ppo": [1.0, 2.0, 3.0], "rto": [2.0, 4.0, 3.5], "dpo": [0.0, 1.0, 2.0]}
    for seed in range(3):
        write_job(out / "final/ppo" / str(seed), config(seed, "sentence"), policy_metrics("policy", gold["ppo"][seed]),
                  curve([-3, -2, -1, 0], [-0.3, -0.2, 0.05, 0.1]))
        write_job(out / "final/rto" / str(seed), config(seed), policy_metrics("policy", gold["rto"][seed]),
                  curve([-3, 0, 1, 1], [-0.3, 0.15, 0.3, 0.33]))
        write_job(out / "final/dpo" / str(seed), config(seed), policy_metrics("dpo", gold["dpo"][seed]))
        # frontier: PPO (KL 1, gold s-2), (KL 4, gold s); RTO (KL 2, gold s-1), (KL 6, gold s+2)
        for i, (beta, kl, g) in enumerate(((1.0, 1.0, seed - 2.0), (0.1, 4.0, seed))):
            write_job(out / f"frontier/ppo/{seed}{i}", config(seed, "sentence", beta), policy_metrics("policy", g, kl))
        for i, (beta, kl, g) in enumerate(((1.0, 2.0, seed - 1.0), (0.1, 6.0, seed + 2.0))):
            write_job(out / f"frontier/rto/{seed}{i}", config(seed, "token", beta), policy_metrics("policy", g, kl))
        for i, variant in enumerate(("sentence", "ddpo")):
            write_job(out / f"density/rto/{seed}{i}", config(seed, variant), policy_metrics("policy", seed + i))
    (out / "protocol.json").write_text(json.dumps({"trials": 6, "seeds": 3, "betas": [0.1, 1.0], "steps": [],
                                                   "best": {}, "seconds": 12.5}))
    report = write_report(out)
    return json.loads((report / "summary.json").read_text()), (report / "report.md").read_text()


def test_paired_final_differences_by_hand(verdict):
    summary, _ = verdict
    diff = summary["final"]["paired"]["RTO - PPO"]
    assert diff["diffs"] == [1.0, 2.0, 0.5]
    assert diff["mean"] == pytest.approx(7 / 6)
    assert diff["se"] == pytest.approx(math.sqrt(7 / 12) / math.sqrt(3))
    t = diff["mean"] / diff["se"]
    assert diff["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # df = 2: closed form
    assert summary["final"]["rows"]["RTO (token)"]["gold_reward"]["mean"] == pytest.approx(9.5 / 3)


def test_equal_kl_interpolation_by_hand(verdict):
    frontier = verdict[0]["frontier"]
    assert frontier["grid"] == [2.0, 2.5, 3.0, 3.5, 4.0]  # where both arms' KL ranges overlap
    # PPO at KL 2: s - 2 + 2/3; RTO at KL 2: s - 1  ->  +1/3 in every seed; at KL 4: s vs s + 0.5
    assert frontier["at_kl"]["PPO (sentence)"][0]["mean"] == pytest.approx(1 - 4 / 3)
    assert frontier["paired"]["RTO - PPO"][0]["diffs"] == pytest.approx([1 / 3] * 3)
    assert frontier["paired"]["RTO - PPO"][-1]["mean"] == pytest.approx(0.5)
    assert frontier["at_kl"]["DPO"] == [None] * 5  # no DPO sweep in these jobs


def test_responses_to_targets_by_hand(verdict):
    eff = verdict[0]["efficiency"]
    assert eff["targets"][0]["value"] == pytest.approx(-1.0)  # PPO's last point, mean of (-2, -1, 0)
    ppo, rto = eff["arms"]["PPO (sentence)"], eff["arms"]["RTO (token)"]
    assert ppo[0]["mean"] == 300.0 and rto[0]["mean"] == 200.0  # smoothed: -3 -2.5 -2 -1 / -3 -1.5 -0.67 0.67
    assert eff["ratio"][0] == pytest.approx(2 / 3)
    assert ppo[1]["reached"] == 0 and "mean" not in ppo[1]  # 0% of the optimum: not within the budget
    assert rto[1]["mean"] == 200.0 and rto[2]["mean"] == 300.0 and rto[3]["mean"] == 300.0


def test_density_orders_variants_against_the_sentence_reward(verdict):
    density = verdict[0]["density"]
    assert density["ordering"] == ["RTO (token)", "DDPO", "PPO (sentence)"]
    assert density["paired_vs_sentence"]["DDPO"]["diffs"] == [1.0, 1.0, 1.0]


def test_an_undefined_p_value_is_told_apart_from_a_missing_number(verdict):
    """DDPO - sentence is +1 in every seed: no spread, so no t-test ("n/a"); the DPO arm at equal KL
    was not measured ("–")."""
    markdown = verdict[1]
    (ddpo,) = [line for line in markdown.splitlines() if line.startswith("| DDPO |")]
    assert ddpo.endswith("| n/a |")
    # RTO - PPO at equal KL is +1/3 in every seed at KL 2: float noise must not make it p = 0
    (at_2,) = [line for line in markdown.splitlines() if line.startswith("| 2.000 |")]
    assert at_2.endswith("(n/a) | – |")  # ... and DPO, not swept, is not measured


def test_every_number_in_the_markdown_is_in_the_summary(verdict):
    summary, markdown = verdict

    def numbers(node):
        if isinstance(node, dict):
            return {x for v in node.values() for x in numbers(v)}
        if isinstance(node, list):
            return {x for v in node for x in numbers(v)}
        return {f"{node:.3f}"} if isinstance(node, (int, float)) and not isinstance(node, bool) else set()

    known = numbers(summary) | {f"{v:.3f}" for v in (0.0, 0.1, 0.25)}
    shown = set(re.findall(r"-?\d+\.\d{3}", markdown))
    assert shown and shown <= known, shown - known
    assert "not within the budget" in markdown


@pytest.mark.slow
def test_whole_protocol_at_tiny_size(tmp_path):
    out = tmp_path / "verdict"
    run("-m", "rto.verdict", "--trials", "2", "--seeds", "2", "--betas", "0.05,0.5", "--more-seeds", "0",
        "--out", str(out), "--", "debug=tiny", f"paths.cache_dir={tmp_path / 'cache'}", timeout=3600)
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert set(summary["final"]["rows"]) == {"SFT", "PPO (sentence)", "RTO (token)", "DPO"}
    assert {step["step"] for step in summary["protocol"]["steps"]} == {"tune", "final", "frontier", "density"}
