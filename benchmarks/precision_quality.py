"""How far `bf16-mixed` moves the results from fp32: two multirun folders of the same sweep, one per
precision, paired job by job (same reward, algorithm and seed).

    python -m rto.main -m experiment=ppo_vs_rto ppo.iterations=20 ppo.val_every=4 hydra.sweep.dir=outputs/precision/fp32
    python -m rto.main -m experiment=ppo_vs_rto ppo.iterations=20 ppo.val_every=4 trainer.precision=bf16-mixed \\
        hydra.sweep.dir=outputs/precision/bf16
    python benchmarks/precision_quality.py outputs/precision/fp32 outputs/precision/bf16

Prints, per evaluated policy (SFT, DPO, the RL policy of each reward) and metric (gold reward, KL to
the reference, win rate), the mean ± standard error over seeds in each folder and the paired
difference (second minus first) with its standard error; writes the table beside the second folder
(`precision_quality.md`). Each folder's own report: `python -m rto.report <folder>`.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rto.report.jobs import load_jobs  # noqa: E402

METRICS = ("gold_reward", "kl", "win_rate")


def by_job(folder: Path) -> dict[tuple, dict[str, float]]:
    """{(reward, algo, seed): metrics} of a multirun folder's finished jobs."""
    out = {}
    for job in load_jobs(folder):
        algo = job.cfg.get("algo", {}).get("name", "ppo")
        out[(job.cfg.reward.name, algo, int(job.cfg.seed))] = job.metrics
    return out


def mean_se(values: list[float]) -> str:
    x = np.asarray(values, dtype=float)
    se = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return f"{x.mean():+.3f} ± {se:.3f}"


def compare(first: Path, second: Path) -> str:
    a, b = by_job(first), by_job(second)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise SystemExit(f"no job of {first} has a partner in {second} (same reward, algo and seed)")
    rows = defaultdict(lambda: ([], []))  # (policy, metric) -> (first values, second values), paired
    for reward, algo, seed in shared:
        for policy in ("sft", "dpo", "policy"):
            name = f"{algo} ({reward})" if policy == "policy" else policy
            for metric in METRICS:
                key = f"eval/{policy}/{metric}"
                if key in a[(reward, algo, seed)] and key in b[(reward, algo, seed)]:
                    rows[(name, metric)][0].append((seed, a[(reward, algo, seed)][key]))
                    rows[(name, metric)][1].append((seed, b[(reward, algo, seed)][key]))
    lines = [f"| policy | metric | {first.name} | {second.name} | paired difference | seeds |",
             "|---|---|---|---|---|---|"]
    for (name, metric), (xs, ys) in rows.items():
        x, y = dict(xs), dict(ys)  # SFT and DPO appear once per reward: one value per seed
        seeds = sorted(x)
        lines.append(f"| {name} | {metric} | {mean_se([x[s] for s in seeds])} | {mean_se([y[s] for s in seeds])} | "
                     f"{mean_se([y[s] - x[s] for s in seeds])} | {len(seeds)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path, help="multirun folder of the baseline (fp32)")
    parser.add_argument("second", type=Path, help="multirun folder of the same sweep in the other precision")
    args = parser.parse_args()
    table = compare(args.first, args.second)
    print(table)
    (args.second / "precision_quality.md").write_text(f"`{' '.join(sys.argv)}`\n\n{table}\n")


if __name__ == "__main__":
    main()
