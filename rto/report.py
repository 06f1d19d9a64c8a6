"""Local comparison report of a multirun, from the files every job writes (no W&B account needed).

    python -m rto.report outputs/rto/multiruns/<time>          # writes <folder>/report/

Reads each job's `.hydra/config.yaml` (reward, beta, model, seed), `metrics.json` (final evaluation)
and `csv/metrics.csv` (one row per PPO iteration), and writes
- `report.md`: final gold reward, KL, win rate and RM score, mean ± standard error over seeds, per
  reward type, beta and model (with the SFT and DPO policies of the same jobs as references);
- `gold_vs_steps.png`: rollout gold reward against PPO iterations, one line per group;
- `frontier.png`: final gold reward against KL to the reference, one point per beta (the frontier);
- `summary.json`: the numbers behind the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

POLICY_LABELS = {"sentence": "PPO (sentence)", "token": "RTO (token)", "ddpo": "DDPO", "semi": "Semi-RTO",
                 "semi_window": "Semi-RTO (window)", "shaping": "RS-PPO"}
COLUMNS = {"gold_reward": "gold reward", "kl": "KL to ref", "win_rate": "win rate vs SFT", "tie_rate": "ties",
           "rm_score": "RM score"}
CURVE_X, CURVE_Y = "ppo/iteration", "ppo/gold_reward"


@dataclass
class Job:
    folder: Path
    reward: str
    beta: float
    model: str
    seed: int
    metrics: dict[str, float]
    curve: dict[int, float] = field(default_factory=dict)  # PPO iteration -> rollout gold reward


def _select(cfg, key: str):
    return OmegaConf.select(cfg, key, throw_on_resolution_failure=False)


def read_curve(path: Path) -> dict[int, float]:
    if not path.is_file():
        return {}
    with open(path) as f:
        return {int(float(row[CURVE_X])): float(row[CURVE_Y]) for row in csv.DictReader(f)
                if row.get(CURVE_X) and row.get(CURVE_Y)}


def load_jobs(folder: Path) -> list[Job]:
    """Every finished job under a multirun folder (a job without `metrics.json` is skipped, with a warning)."""
    jobs = []
    for config in sorted(folder.glob("*/.hydra/config.yaml"), key=lambda p: p.parts):
        job_dir = config.parent.parent
        if not (job_dir / "metrics.json").is_file():
            log.warning("skipping %s: no metrics.json (failed or still running)", job_dir)
            continue
        cfg = OmegaConf.load(config)
        jobs.append(Job(job_dir, str(_select(cfg, "reward.name")), float(_select(cfg, "beta")),
                        str(_select(cfg, "model.name")), int(_select(cfg, "seed")),
                        json.loads((job_dir / "metrics.json").read_text()),
                        read_curve(job_dir / "csv" / "metrics.csv")))
    if not jobs:
        raise FileNotFoundError(f"{folder} holds no finished job (<job>/.hydra/config.yaml and <job>/metrics.json)")
    return jobs


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (nan error for a single seed)."""
    arr = np.asarray(values, dtype=float)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else float("nan")
    return float(arr.mean()), se


def summarize(jobs: list[Job]) -> list[dict]:
    """One row per (policy, beta, model): the PPO policy per reward type, then SFT and DPO as references."""
    groups: dict[tuple, dict[int, dict[str, float]]] = defaultdict(dict)
    for job in jobs:
        groups[(POLICY_LABELS.get(job.reward, job.reward), "policy", job.beta, job.model)][job.seed] = job.metrics
        for ref in ("sft", "dpo"):  # every job evaluates them; one value per seed
            groups[(ref.upper(), ref, job.beta, job.model)].setdefault(job.seed, job.metrics)
    rows = []
    for (label, prefix, beta, model), by_seed in groups.items():
        row = {"policy": label, "beta": beta, "model": model, "seeds": sorted(by_seed)}
        for key in COLUMNS:
            values = [m[f"eval/{prefix}/{key}"] for m in by_seed.values() if f"eval/{prefix}/{key}" in m]
            if values:
                row[key], row[f"{key}_se"] = mean_se(values)
        rows.append(row)
    order = {"SFT": 0, "DPO": 1}
    return sorted(rows, key=lambda r: (r["model"], r["beta"], order.get(r["policy"], 2), r["policy"]))


def _fmt(value: Optional[float], se: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if se is None or math.isnan(se) else f"{value:.3f} ± {se:.3f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| policy | beta | model | seeds | " + " | ".join(COLUMNS.values()) + " |",
             "|---" * (4 + len(COLUMNS)) + "|"]
    for r in rows:
        cells = [_fmt(r.get(k), r.get(f"{k}_se")) for k in COLUMNS]
        lines.append(f"| {r['policy']} | {r['beta']:g} | {r['model']} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(jobs: list[Job], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_group: dict[tuple, list[dict[int, float]]] = defaultdict(list)
    for job in jobs:
        if job.curve:
            by_group[(job.reward, job.beta, job.model)].append(job.curve)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (reward, beta, model), curves in sorted(by_group.items()):
        steps = sorted(set().union(*curves))
        stats = [mean_se([c[s] for c in curves if s in c]) for s in steps]
        mean = np.array([m for m, _ in stats])
        se = np.nan_to_num(np.array([e for _, e in stats]))
        line, = ax.plot(steps, mean, label=f"{POLICY_LABELS.get(reward, reward)} beta={beta:g} {model} (n={len(curves)})")
        ax.fill_between(steps, mean - se, mean + se, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="PPO iteration", ylabel="gold reward of the rollout", title="Gold reward during RL (mean ± s.e. over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontier(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if "kl" in r and "gold_reward" in r and r["policy"] != "SFT":
            series[(r["policy"], r["model"])].append(r)
    for (policy, model), points in sorted(series.items()):
        points.sort(key=lambda r: r["beta"])
        ax.errorbar([p["kl"] for p in points], [p["gold_reward"] for p in points],
                    xerr=np.nan_to_num([p.get("kl_se", 0) for p in points]),
                    yerr=np.nan_to_num([p.get("gold_reward_se", 0) for p in points]),
                    marker="o", capsize=3, label=f"{policy} {model}")
        for p in points:
            ax.annotate(f"β={p['beta']:g}", (p["kl"], p["gold_reward"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    sft = [r for r in rows if r["policy"] == "SFT" and "gold_reward" in r]
    if sft:
        ax.axhline(np.mean([r["gold_reward"] for r in sft]), color="grey", ls="--", lw=1, label="SFT")
    ax.set(xlabel="KL to the reference (per response)", ylabel="gold reward (held-out prompts)",
           title="Gold reward against KL: the frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(folder: Path, out: Optional[Path] = None) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (expected a multirun folder, outputs/<task>/multiruns/<time>)")
    out = Path(out) if out else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    jobs = load_jobs(folder)
    rows = summarize(jobs)
    table = markdown_table(rows)
    (out / "report.md").write_text(
        f"# {folder.name}: {len(jobs)} runs\n\nFinal evaluation on held-out prompts, mean ± standard error over "
        f"seeds.\n\n{table}\n\n![gold reward during RL](gold_vs_steps.png)\n\n![frontier](frontier.png)\n")
    (out / "summary.json").write_text(json.dumps(
        {"rows": rows, "jobs": [{"folder": str(j.folder), "reward": j.reward, "beta": j.beta, "model": j.model,
                                 "seed": j.seed} for j in jobs]}, indent=2) + "\n")
    plot_curves(jobs, out / "gold_vs_steps.png")
    plot_frontier(rows, out / "frontier.png")
    print(table)
    print(f"\nreport written to {out}")
    return out


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rto.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a multirun folder (outputs/<task>/multiruns/<time>)")
    parser.add_argument("--out", type=Path, help="where to write (default: <folder>/report)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    write_report(args.folder, args.out)


if __name__ == "__main__":
    main()
