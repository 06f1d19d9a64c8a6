"""The multirun report names its rows by learner and DPO-family loss, and its sample-efficiency table
reads the validation curves at shares of the sampled-response budget (numbers by hand, on job folders
written as the entry point writes them)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rto.report.jobs import load_jobs
from rto.report.multirun import efficiency_table, markdown_table, summarize, write_multirun_report


def write_job(folder: Path, algo: str, reward: str, seed: int, gold: float, val: list[tuple[int, float]],
              dpo_loss: str = "sigmoid") -> None:
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"algo": {"name": algo}, "reward": {"name": reward}, "beta": 0.1,
                                     "model": {"name": "tiny"}, "seed": seed, "dpo": {"loss": dpo_loss},
                                     "eval": {"prompt_set": "test"}}), folder / ".hydra" / "config.yaml")
    metrics = {"eval/policy/gold_reward": gold, "eval/policy/kl": 1.0, "eval/sft/gold_reward": 0.0,
               "eval/sft/kl": 0.0, "eval/dpo/gold_reward": 0.5, "eval/dpo/kl": 0.5}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "csv").mkdir()
    with open(folder / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["val/sampled_responses", "val/gold_reward"])
        writer.writeheader()
        for responses, value in val:
            writer.writerow({"val/sampled_responses": responses, "val/gold_reward": value})


@pytest.fixture
def runs(tmp_path):
    # budget 400 responses: points at 0, 100, 200, 300, 400; 25 % -> the point at 100, 50 % -> 200
    for seed, offset in ((0, 0.0), (1, 2.0)):
        write_job(tmp_path / f"grpo_token_{seed}", "grpo", "token", seed, 3.0 + offset,
                  [(0, 0.0), (100, 1.0 + offset), (200, 2.0 + offset), (300, 2.5), (400, 3.0 + offset)])
        write_job(tmp_path / f"ppo_token_{seed}", "ppo", "token", seed, 1.0 + offset,
                  [(0, 0.0), (200, 1.0), (400, 1.0 + offset)], dpo_loss="simpo")
    return tmp_path


def test_rows_are_named_by_learner_and_dpo_family_loss(runs):
    rows = {row["policy"]: row for row in summarize(load_jobs(runs))}
    assert set(rows) == {"SFT", "DPO", "SimPO", "GRPO (token)", "RTO (token)"}
    assert rows["GRPO (token)"]["gold_reward"] == pytest.approx(4.0)  # seeds 3 and 5
    assert rows["RTO (token)"]["gold_reward"] == pytest.approx(2.0)   # PPO keeps the paper's name


def test_efficiency_table_reads_each_share_of_the_budget(runs):
    table = efficiency_table(load_jobs(runs))
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    cells = {label: [cell.strip(" |") for cell in line.split(" | ")[3:]] for label, line in lines.items()}
    # GRPO, 25 %: seeds 1.0 and 3.0; 50 %: 2.0 and 4.0; 100 %: 3.0 and 5.0 (s.e. of two values 1 apart: 1)
    assert cells["GRPO (token)"] == ["2.000 ± 1.000", "3.000 ± 1.000", "4.000 ± 1.000"]
    # PPO's curve has no point at 100: the last point at or before 25 % of 400 is the start (0.0)
    assert cells["RTO (token)"] == ["0.000 ± 0.000", "1.000 ± 0.000", "2.000 ± 1.000"]
    assert "budget 400 responses" in table


def test_report_file_holds_both_tables(runs, tmp_path):
    out = write_multirun_report(runs, tmp_path / "report")
    text = (out / "report.md").read_text()
    assert "GRPO (token)" in text and "SimPO" in text and "val gold at 25% of responses" in text
    algos = {job["algo"] for job in json.loads((out / "summary.json").read_text())["jobs"]}
    assert algos == {"grpo", "ppo"}


def test_jobs_that_differ_beyond_the_seed_get_rows_of_their_own(tmp_path, caplog):
    """Two learning rates x two seeds: two rows, never one row averaging both rates (or a job of one rate
    replacing the other's at the same seed); the SFT row does not split on an RL setting, but the DPO row
    splits on dpo.beta; the same settings and seed twice is named in a warning."""
    for lr, offset in ((1e-4, 0.0), (1e-3, 10.0)):
        for seed in (0, 1):
            folder = tmp_path / f"lr{lr}_s{seed}"
            write_job(folder, "ppo", "token", seed, offset + seed, [(0, 0.0), (100, 1.0)])
            cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
            cfg.ppo = {"actor_optimizer": {"lr": lr}}
            cfg.dpo.beta = 0.1 if lr == 1e-4 else 0.3
            OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    rows = summarize(load_jobs(tmp_path))
    rto = {r["settings"]: r for r in rows if r["policy"] == "RTO (token)"}
    assert set(rto) == {"dpo.beta=0.1, ppo.actor_optimizer.lr=0.0001", "dpo.beta=0.3, ppo.actor_optimizer.lr=0.001"}
    assert rto["dpo.beta=0.3, ppo.actor_optimizer.lr=0.001"]["gold_reward"] == pytest.approx(10.5)
    assert all(len(r["seeds"]) == 2 for r in rows)
    assert [r["settings"] for r in rows if r["policy"] == "SFT"] == [""]
    assert sorted(r["settings"] for r in rows if r["policy"] == "DPO") == ["dpo.beta=0.1", "dpo.beta=0.3"]
    assert "| settings |" in markdown_table(rows) and "| settings |" in efficiency_table(load_jobs(tmp_path))
    # a job of the same settings and seed again
    import shutil
    shutil.copytree(tmp_path / "lr0.001_s0", tmp_path / "zz_again")
    with caplog.at_level("WARNING"):
        again = summarize(load_jobs(tmp_path))
    assert len(again) == len(rows) and "the same settings and seed 0" in caplog.text


def test_a_seed_run_twice_counts_once_in_the_efficiency_table(runs):
    """A job of the same settings and seed again (a re-launched job, here with other numbers) does not
    count as one more seed in the sample-efficiency table: the first job is kept, as in the final table."""
    write_job(runs / "zz_grpo_token_0_again", "grpo", "token", 0, 99.0,
              [(0, 0.0), (100, 50.0), (200, 50.0), (300, 50.0), (400, 50.0)])
    table = efficiency_table(load_jobs(runs))
    grpo = next(line for line in table.splitlines() if line.startswith("| GRPO (token)"))
    assert [cell.strip(" |") for cell in grpo.split(" | ")[3:]] == ["2.000 ± 1.000", "3.000 ± 1.000", "4.000 ± 1.000"]


def test_dpo_family_jobs_beside_rl_jobs_split_no_row(tmp_path):
    """`experiment=algo_x_reward` and `experiment=dpo_family` into one folder (as the README runs them):
    the DPO-family jobs have no RL row, so their settings do not split the RL rows, and `dpo.beta: ${beta}`
    (the RL jobs) is the same setting as `dpo.beta: 0.1` (the family's) at beta 0.1."""
    for seed in (0, 1):
        write_job(tmp_path / f"ppo_token_{seed}", "ppo", "token", seed, 1.0 + seed, [(0, 0.0), (100, 1.0)])
        for loss in ("ipo", "sigmoid"):  # the family's jobs, DPO itself among them
            write_job(tmp_path / f"{loss}_{seed}", "ppo", "token", seed, 0.0, [], dpo_loss=loss)
            metrics = json.loads((tmp_path / f"{loss}_{seed}" / "metrics.json").read_text())
            metrics = {k: v for k, v in metrics.items() if not k.startswith("eval/policy/")}  # no RL stage
            (tmp_path / f"{loss}_{seed}" / "metrics.json").write_text(json.dumps(metrics))
        for name, beta in ((f"ppo_token_{seed}", "${beta}"), (f"ipo_{seed}", 0.1), (f"sigmoid_{seed}", 0.1)):
            cfg = OmegaConf.load(tmp_path / name / ".hydra" / "config.yaml")
            cfg.dpo.beta = beta
            OmegaConf.save(cfg, tmp_path / name / ".hydra" / "config.yaml")
    rows = {row["policy"]: row for row in summarize(load_jobs(tmp_path))}
    assert set(rows) == {"SFT", "DPO", "IPO", "RTO (token)"}
    assert all(row["settings"] == "" and len(row["seeds"]) == 2 for row in rows.values())
    assert "| settings |" not in efficiency_table(load_jobs(tmp_path))


def test_a_setting_written_as_an_interpolation_is_labelled_by_its_value(tmp_path):
    """RL jobs at dpo.beta=${beta} (0.1) beside DPO-family jobs at dpo.beta=0.1 and 0.3 (a DPO frontier
    in the same folder): two DPO rows, 0.1 (both kinds of job) and 0.3, not three."""
    for seed in (0, 1):
        write_job(tmp_path / f"ppo_token_{seed}", "ppo", "token", seed, 1.0, [(0, 0.0), (100, 1.0)])
        for beta in (0.1, 0.3):
            name = f"dpo_{beta}_{seed}"
            write_job(tmp_path / name, "ppo", "token", seed, 0.0, [])
            metrics = json.loads((tmp_path / name / "metrics.json").read_text())
            (tmp_path / name / "metrics.json").write_text(json.dumps(
                {k: v + beta for k, v in metrics.items() if not k.startswith("eval/policy/")}))
        for name, value in ((f"ppo_token_{seed}", "${beta}"), (f"dpo_0.1_{seed}", 0.1), (f"dpo_0.3_{seed}", 0.3)):
            cfg = OmegaConf.load(tmp_path / name / ".hydra" / "config.yaml")
            cfg.dpo.beta = value
            OmegaConf.save(cfg, tmp_path / name / ".hydra" / "config.yaml")
    dpo = sorted(r["settings"] for r in summarize(load_jobs(tmp_path)) if r["policy"] == "DPO")
    assert dpo == ["dpo.beta=0.1", "dpo.beta=0.3"]
