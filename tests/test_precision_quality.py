"""`benchmarks/precision_quality.py` pairs two multirun folders job by job (reward, algorithm, seed) and
reports each side's mean ± s.e. and the paired difference, SFT and DPO once per seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import precision_quality  # noqa: E402


def fake_multirun(folder: Path, gold: dict) -> Path:
    """Finished jobs as Hydra writes them: <job>/.hydra/config.yaml and <job>/metrics.json."""
    for i, ((reward, seed), value) in enumerate(sorted(gold.items())):
        job = folder / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "reward": {"name": reward},
                                                                     "algo": {"name": "ppo"}}))
        metrics = {"eval/policy/gold_reward": value, "eval/sft/gold_reward": -5.0 + seed, "eval/policy/kl": 1.0}
        (job / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_paired_difference_per_policy(tmp_path, monkeypatch, capsys):
    fp32 = fake_multirun(tmp_path / "fp32", {("token", 0): 1.0, ("token", 1): 2.0, ("token", 2): 3.0,
                                             ("sentence", 0): 0.0, ("sentence", 1): 0.5})
    bf16 = fake_multirun(tmp_path / "bf16", {("token", 0): 1.5, ("token", 1): 2.5, ("token", 2): 3.0,
                                             ("sentence", 0): 0.0, ("sentence", 2): 9.0})  # seed 2: no partner
    monkeypatch.setattr(sys, "argv", ["precision_quality.py", str(fp32), str(bf16)])
    precision_quality.main()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:7]]
            for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows[("ppo (token)", "gold_reward")] == ["+2.000 ± 0.577", "+2.333 ± 0.441", "+0.333 ± 0.167", "3"]
    assert rows[("ppo (sentence)", "gold_reward")][2:] == ["+0.000 ± nan", "1"]  # only seed 0 is paired
    # SFT once per seed, though both rewards' jobs report it
    assert rows[("sft", "gold_reward")] == ["-4.000 ± 0.577", "-4.000 ± 0.577", "+0.000 ± 0.000", "3"]
    assert (bf16 / "precision_quality.md").is_file()
