"""Local comparison report of a multirun, from the files every job writes (no W&B account needed).

    python -m rto.report outputs/rto/multiruns/<time>          # writes <folder>/report/

Reads each job's `.hydra/config.yaml` (reward, beta, model, seed), `metrics.json` (final evaluation)
and `csv/metrics.csv` (one row per PPO iteration), and writes
- `report.md`: final gold reward, KL, win rate and RM score, mean ± standard error over seeds, per
  learner and reward type, beta and model (with the SFT and DPO-family policies of the same jobs as
  references), and the sample efficiency: validation gold reward against the sampled responses.
  Jobs that differ in any other setting (a swept learning rate, `dpo.beta`, the prompt set, ...) get
  rows of their own, the settings named: seeds are only averaged over jobs that differ in the seed;
- `gold_vs_steps.png`: rollout gold reward against PPO iterations, one line per group;
- `frontier.png`: final gold reward against KL to the reference, one point per beta (the frontier);
- `summary.json`: the numbers behind the table;
- links to the jobs' token pages (`python -m rto.tokens <job>`), where they have one.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from rto.report.jobs import Job, load_jobs, unfinished_jobs
from rto.report.jobs import VAL_X
from rto.report.settings import setting_labels
from rto.report.stats import mean_se

log = logging.getLogger(__name__)

POLICY_LABELS = {"sentence": "PPO (sentence)", "token": "RTO (token)", "ddpo": "DDPO", "semi": "Semi-RTO",
                 "semi_window": "Semi-RTO (window)", "shaping": "RS-PPO"}
# the RL learner (`algo=`) and the DPO-family loss (`dpo.loss`) name the rows; PPO keeps the paper's names
LEARNER_LABELS = {"reinforce_pp": "REINFORCE++", "rloo": "RLOO", "grpo": "GRPO"}
DPO_LABELS = {"sigmoid": "DPO", "ipo": "IPO", "simpo": "SimPO"}
BUDGET_FRACTIONS = (0.25, 0.5, 1.0)
COLUMNS = {"gold_reward": "gold reward", "kl": "KL to ref", "win_rate": "win rate vs SFT", "tie_rate": "ties",
           "rm_score": "RM score"}
TOKEN_PAGE = "tokens.html"  # rto.tokens' page, linked where a job has one


def policy_label(job: Job) -> str:
    """`PPO (sentence)`, `RTO (token)`, ... for PPO; `<learner> (<reward>)` for the other learners."""
    algo = str(job.get("algo.name", "ppo"))
    if algo == "ppo":
        return POLICY_LABELS.get(job.reward, job.reward)
    return f"{LEARNER_LABELS.get(algo, algo)} ({job.reward})"


def reference_label(job: Job, ref: str) -> str:
    return DPO_LABELS.get(str(job.get("dpo.loss", "sigmoid")), "DPO") if ref == "dpo" else ref.upper()


def row_label(job: Job, kind: str) -> Optional[str]:
    """The job's row of `kind`; None where it has none (no RL stage, or that policy not evaluated)."""
    if kind == "policy":
        return policy_label(job) if job.curve or job.val_curve or "eval/policy/kl" in job.metrics else None
    return reference_label(job, kind) if f"eval/{kind}/kl" in job.metrics else None


def summarize(jobs: list[Job]) -> list[dict]:
    """One row per (policy, beta, model, other settings): the RL policy per learner and reward type,
    then SFT and the DPO family as references."""
    settings = setting_labels(jobs, row_label)
    groups: dict[tuple, dict[int, dict[str, float]]] = defaultdict(dict)
    folders: dict[tuple, Path] = {}
    for i, job in enumerate(jobs):
        for kind in ("policy", "sft", "dpo"):
            if f"eval/{kind}/kl" not in job.metrics:  # not evaluated (`eval.policies`), or no RL
                continue
            key = (row_label(job, kind), kind, job.beta, job.model, settings[i, kind])
            if job.seed in groups[key]:
                if kind == "policy":  # the same settings and seed twice (a job run again): the first is kept
                    log.warning("%s and %s: the same settings and seed %d; the report keeps the first",
                                folders[key + (job.seed,)], job.folder, job.seed)
                continue
            groups[key][job.seed] = job.metrics
            folders[key + (job.seed,)] = job.folder
    rows = []
    for (label, prefix, beta, model, setting), by_seed in groups.items():
        row = {"policy": label, "beta": beta, "model": model, "settings": setting, "seeds": sorted(by_seed)}
        for key in COLUMNS:
            values = [m[f"eval/{prefix}/{key}"] for m in by_seed.values() if f"eval/{prefix}/{key}" in m]
            if values:
                row[key], row[f"{key}_se"] = mean_se(values)
        rows.append(row)
    order = {"SFT": 0, **{label: 1 for label in DPO_LABELS.values()}}
    return sorted(rows, key=lambda r: (r["model"], r["beta"], order.get(r["policy"], 2), r["policy"], r["settings"]))


def _fmt(value: Optional[float], se: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if se is None or math.isnan(se) else f"{value:.3f} ± {se:.3f}"


def markdown_table(rows: list[dict]) -> str:
    with_settings = any(r.get("settings") for r in rows)  # a column only where jobs differ beyond the seed
    extra = ["settings"] if with_settings else []
    lines = ["| " + " | ".join(["policy", "beta", "model", *extra, "seeds", *COLUMNS.values()]) + " |",
             "|---" * (4 + len(extra) + len(COLUMNS)) + "|"]
    for r in rows:
        cells = [_fmt(r.get(k), r.get(f"{k}_se")) for k in COLUMNS]
        named = [r.get("settings") or "–"] if with_settings else []
        seeds = f"{len(r['seeds'])} ({', '.join(map(str, r['seeds']))})"  # which: a missing seed shows
        lines.append("| " + " | ".join([r["policy"], f"{r['beta']:g}", r["model"], *named, seeds, *cells]) + " |")
    return "\n".join(lines)


def policy_groups(jobs: list[Job], keep: Callable[[Job], bool]) -> dict[tuple, list[Job]]:
    """The RL jobs that `keep` accepts by (learner and reward, beta, model, other settings), one job per
    seed: a seed run twice counts once, its first job (as in `summarize`, which warns)."""
    settings = setting_labels(jobs, row_label)
    groups: dict[tuple, dict[int, Job]] = defaultdict(dict)
    for i, job in enumerate(jobs):
        if keep(job):
            groups[(policy_label(job), job.beta, job.model, settings[i, "policy"])].setdefault(job.seed, job)
    return {key: list(by_seed.values()) for key, by_seed in groups.items()}


def plot_curves(jobs: list[Job], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_group = {key: [job.curve for job in group] for key, group in policy_groups(jobs, lambda j: bool(j.curve)).items()}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (label, beta, model, setting), curves in sorted(by_group.items()):
        steps = sorted(set().union(*curves))
        stats = [mean_se([c[s] for c in curves if s in c]) for s in steps]
        mean = np.array([m for m, _ in stats])
        se = np.nan_to_num(np.array([e for _, e in stats]))
        line, = ax.plot(steps, mean, label=f"{label} beta={beta:g} {model}{' ' + setting if setting else ''} "
                                           f"(n={len(curves)})")
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
            series[(r["policy"], r["model"], r.get("settings", ""))].append(r)
    for (policy, model, setting), points in sorted(series.items()):
        points.sort(key=lambda r: r["beta"])
        ax.errorbar([p["kl"] for p in points], [p["gold_reward"] for p in points],
                    xerr=np.nan_to_num([p.get("kl_se", 0) for p in points]),
                    yerr=np.nan_to_num([p.get("gold_reward_se", 0) for p in points]),
                    marker="o", capsize=3, label=f"{policy} {model}{' ' + setting if setting else ''}")
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


def efficiency_table(jobs: list[Job]) -> str:
    """Validation gold reward (mean ± s.e. over seeds) after a share of the sampled-response budget:
    learners that sample the same responses per iteration compare at equal RL data."""
    with_val = policy_groups(jobs, lambda j: bool(j.val_curve) and "val/gold_reward" in j.val_curve[-1])
    by_group = {key: [job.val_curve for job in group] for key, group in with_val.items()}
    if not by_group:
        return ""
    with_settings = any(setting for _, _, _, setting in by_group)
    lines = ["| policy | beta | model | " + ("settings | " if with_settings else "")
             + " | ".join(f"val gold at {f:.0%} of responses" for f in BUDGET_FRACTIONS) + " |",
             "|---" * (3 + with_settings + len(BUDGET_FRACTIONS)) + "|"]
    for (label, beta, model, setting), curves in sorted(by_group.items()):
        cells = []
        for fraction in BUDGET_FRACTIONS:  # the last point at or before that share of each run's budget
            values = [[p for p in c if p[VAL_X] <= fraction * c[-1][VAL_X]][-1]["val/gold_reward"] for c in curves]
            cells.append(_fmt(*mean_se(values)))
        named = f"{setting or '–'} | " if with_settings else ""
        lines.append(f"| {label} | {beta:g} | {model} | {named}" + " | ".join(cells) + " |")
    budget = sorted({c[-1][VAL_X] for curves in by_group.values() for c in curves})
    return ("Sample efficiency: validation gold reward after a share of the sampled responses (budget "
            f"{', '.join(f'{b:g}' for b in budget)} responses).\n\n" + "\n".join(lines))


def prompt_sets(jobs: list[Job]) -> str:
    """Which prompt set the jobs' final evaluation read, in words."""
    names = {"test": "test prompts", "val": "validation prompts"}
    sets = sorted({str(job.get("eval.prompt_set", "test")) for job in jobs})
    return " and ".join(names.get(s, s) for s in sets)


def token_pages(jobs: list[Job], out: Path) -> str:
    """Links to the jobs' token pages (`python -m rto.tokens <job>` writes `<job>/tokens.html`)."""
    links = [f"- [{job.folder.name}: {POLICY_LABELS.get(job.reward, job.reward)}, beta={job.beta:g}, {job.model}, "
             f"seed {job.seed}]({os.path.relpath(job.folder / TOKEN_PAGE, out)})"
             for job in jobs if (job.folder / TOKEN_PAGE).is_file()]
    return "\n## Token pages\n\nEvery response token coloured by its reward:\n\n" + "\n".join(links) + "\n" if links else ""


def write_multirun_report(folder: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    jobs, unfinished = load_jobs(folder), unfinished_jobs(folder)
    rows = summarize(jobs)
    table, efficiency = markdown_table(rows), efficiency_table(jobs)
    missing = (f"**{len(unfinished)} job(s) without results** (failed, killed or still running; not in any table "
               f"below): {', '.join(p.name for p in unfinished)}\n\n") if unfinished else ""
    (out / "report.md").write_text(
        f"# {folder.name}: {len(jobs)} runs\n\n{missing}Final evaluation on {prompt_sets(jobs)}, mean ± standard "
        f"error over seeds.\n\n{table}\n\n{efficiency}\n\n![gold reward during RL](gold_vs_steps.png)\n\n"
        f"![frontier](frontier.png)\n" + token_pages(jobs, out))
    (out / "summary.json").write_text(json.dumps(
        {"rows": rows, "jobs": [{"folder": str(j.folder), "algo": str(j.get("algo.name", "ppo")), "reward": j.reward,
                                 "beta": j.beta, "model": j.model, "seed": j.seed} for j in jobs],
         "unfinished": [str(p) for p in unfinished]}, indent=2) + "\n")
    plot_curves(jobs, out / "gold_vs_steps.png")
    plot_frontier(rows, out / "frontier.png")
    print(missing + table + ("\n\n" + efficiency if efficiency else ""))
    print(f"\nreport written to {out}")
    return out
