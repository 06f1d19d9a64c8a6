"""The verdict report of `python -m rto.verdict`: PPO vs RTO vs DPO under one protocol.

Reads `<out>/{final,final-more,frontier,density}/<arm>/` (Hydra multiruns) and `<out>/protocol.json`,
builds `summary.json` (every number), renders `report.md` from that summary alone, and draws the plots
(`rto.report.verdict_plots`). Sections:
- final table on test prompts, per arm, mean ± s.e. over seeds, and paired per-seed differences
  (RTO - PPO, RTO - DPO) with a paired t-test;
- equal KL: each arm's gold interpolated at common KL values of its beta sweep;
- sample efficiency: sampled responses until the validation curve, smoothed over `WINDOW` points,
  first reaches PPO's final validation score and fixed shares of the task's optimum;
- density: the DPO-reward variants at one budget, ordered, each against the sentence reward and
  against the next one down the ordering (is each step of the ordering itself significant?).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from rto.report.jobs import VAL_X, Job, load_jobs
from rto.report.stats import common_kl_grid, first_reaching, interpolate_at, mean_se, paired, smooth

ARM_LABELS = {"ppo": "PPO (sentence)", "rto": "RTO (token)", "dpo": "DPO"}
VARIANT_LABELS = {"sentence": "PPO (sentence)", "ddpo": "DDPO", "semi": "Semi-RTO", "semi_window": "Semi-RTO (window)",
                  "shaping": "RS-PPO", "token": "RTO (token)"}
FINAL_KEYS = ("gold_reward", "gold_fraction", "kl", "win_rate", "tie_rate", "rm_score", "response_length",
              "distinct_ratio")
TARGET_FRACTIONS = (0.0, 0.1, 0.25)  # shares of the optimum, fixed before any run
WINDOW = 3  # validation points averaged (trailing) before reading when a target is reached
GRID_POINTS = 5


def prefix(arm: str) -> str:
    return "dpo" if arm == "dpo" else "policy"


def added_seeds(out: Path) -> bool:
    """Whether the latest final step added seeds (`final-more/` left by an earlier run is not read)."""
    path = out / "protocol.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("more_seeds"))


def arm_jobs(out: Path, step: str, arm: str) -> list[Job]:
    """The arm's finished jobs of a step (`final` includes `final-more`, the extra seeds, when the
    protocol added them)."""
    steps = (step, f"{step}-more") if step == "final" and added_seeds(out) else (step,)
    return [job for s in steps if (out / s / arm).is_dir() for job in load_jobs(out / s / arm, required=False)]


def by_seed(jobs: list[Job], key: str) -> dict[int, float]:
    return {job.seed: float(job.metrics[key]) for job in jobs if key in job.metrics}


def stat(values: dict[int, float]) -> dict:
    mean, se = mean_se(list(values.values()))
    return {"mean": mean, "se": se, "n": len(values)}


# ---- sections -----------------------------------------------------------------------------------
def final_section(out: Path) -> dict:
    jobs = {arm: arm_jobs(out, "final", arm) for arm in ARM_LABELS}
    rows = {"SFT": {key: stat(by_seed(jobs["ppo"] or jobs["dpo"], f"eval/sft/{key}"))
                    for key in FINAL_KEYS if by_seed(jobs["ppo"] or jobs["dpo"], f"eval/sft/{key}")}}
    for arm, label in ARM_LABELS.items():
        rows[label] = {key: stat(values) for key in FINAL_KEYS
                       if (values := by_seed(jobs[arm], f"eval/{prefix(arm)}/{key}"))}
    gold = {arm: by_seed(jobs[arm], f"eval/{prefix(arm)}/gold_reward") for arm in ARM_LABELS}
    diffs = {"RTO - PPO": paired(gold["rto"], gold["ppo"]), "RTO - DPO": paired(gold["rto"], gold["dpo"])}
    return {"rows": rows, "paired": {name: d for name, d in diffs.items() if d is not None}}


def frontier_section(out: Path) -> dict:
    points: dict[str, list[dict]] = {}
    for arm in ARM_LABELS:
        swept = "dpo.beta" if arm == "dpo" else "beta"
        points[arm] = [{"seed": job.seed, "beta": float(job.get(swept)),
                        "kl": job.metrics[f"eval/{prefix(arm)}/kl"],
                        "gold": job.metrics[f"eval/{prefix(arm)}/gold_reward"],
                        "rm_score": job.metrics[f"eval/{prefix(arm)}/rm_score"]}
                       for job in arm_jobs(out, "frontier", arm) if f"eval/{prefix(arm)}/gold_reward" in job.metrics]
    per_seed = {arm: _group(pts) for arm, pts in points.items()}
    ranges = [(min(p["kl"] for p in pts), max(p["kl"] for p in pts))
              for arm in ("ppo", "rto") for pts in per_seed[arm].values()]
    grid = common_kl_grid(ranges, GRID_POINTS) if ranges else []
    at = {arm: {seed: interpolate_at([p["kl"] for p in pts], [p["gold"] for p in pts], grid)
                for seed, pts in per_seed[arm].items()} for arm in ARM_LABELS}
    at_kl = {ARM_LABELS[arm]: [_stat_at(at[arm], i) for i in range(len(grid))] for arm in ARM_LABELS}
    diffs = {"RTO - PPO": [_paired_at(at["rto"], at["ppo"], i) for i in range(len(grid))],
             "RTO - DPO": [_paired_at(at["rto"], at["dpo"], i) for i in range(len(grid))]}
    return {"points": {ARM_LABELS[arm]: pts for arm, pts in points.items()}, "grid": grid, "at_kl": at_kl,
            "paired": diffs}


def _group(points: list[dict]) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = defaultdict(list)
    for p in points:
        grouped[p["seed"]].append(p)
    return dict(grouped)


def _stat_at(values: dict[int, list], i: int) -> Optional[dict]:
    defined = {seed: v[i] for seed, v in values.items() if v[i] is not None}
    return stat(defined) if defined else None


def _paired_at(a: dict[int, list], b: dict[int, list], i: int) -> Optional[dict]:
    return paired({s: v[i] for s, v in a.items() if v[i] is not None}, {s: v[i] for s, v in b.items() if v[i] is not None})


def efficiency_section(out: Path) -> dict:
    curves = {arm: {job.seed: job.val_curve for job in arm_jobs(out, "final", arm) if job.val_curve}
              for arm in ("ppo", "rto")}
    ppo_final = [smooth([p["val/gold_reward"] for p in c], WINDOW)[-1] for c in curves["ppo"].values()]
    targets = [{"name": f"PPO's final validation gold (its last {WINDOW} points averaged)", "key": "val/gold_reward",
                "value": float(np.mean(ppo_final)) if ppo_final else None}]
    targets += [{"name": f"{f:.0%} of the optimum", "key": "val/gold_fraction", "value": f} for f in TARGET_FRACTIONS]
    result = {"window": WINDOW, "targets": targets, "arms": {}, "ratio": []}
    for arm, seeds in curves.items():
        rows = []
        for target in targets:
            reached = {seed: first_reaching([p[VAL_X] for p in c], [p.get(target["key"], np.nan) for p in c],
                                            target["value"], WINDOW)
                       for seed, c in seeds.items()} if target["value"] is not None else {}
            hit = {s: v for s, v in reached.items() if v is not None}
            rows.append({"per_seed": reached, "reached": len(hit), "seeds": len(reached),
                         **({"mean": stat(hit)["mean"], "se": stat(hit)["se"]} if hit else {})})
        result["arms"][ARM_LABELS[arm]] = rows
    for i, _ in enumerate(targets):
        rto, ppo = result["arms"].get(ARM_LABELS["rto"]), result["arms"].get(ARM_LABELS["ppo"])
        both = rto and ppo and rto[i]["reached"] == rto[i]["seeds"] > 0 and ppo[i]["reached"] == ppo[i]["seeds"] > 0
        result["ratio"].append(rto[i]["mean"] / ppo[i]["mean"] if both and ppo[i]["mean"] > 0 else None)
    return result


def density_section(out: Path) -> dict:
    jobs = arm_jobs(out, "density", "rto") + arm_jobs(out, "final", "rto")  # RTO: the final arm's runs
    gold: dict[str, dict[int, float]] = defaultdict(dict)
    for job in jobs:
        if "eval/policy/gold_reward" in job.metrics:
            gold[VARIANT_LABELS.get(job.reward, job.reward)][job.seed] = float(job.metrics["eval/policy/gold_reward"])
    variants = {label: stat(values) for label, values in gold.items()}
    base = gold.get(VARIANT_LABELS["sentence"], {})
    ordering = sorted(variants, key=lambda v: -variants[v]["mean"])
    return {"variants": variants, "ordering": ordering,
            "paired_vs_sentence": {label: d for label, values in gold.items()
                                   if label != VARIANT_LABELS["sentence"] and (d := paired(values, base))},
            # each variant against the one just below it: an ordering is only as firm as its steps
            "paired_vs_next": {upper: d for upper, lower in zip(ordering, ordering[1:])
                               if (d := paired(gold[upper], gold[lower]))}}


def build_summary(out: Path) -> dict:
    protocol = json.loads((out / "protocol.json").read_text())
    return {"protocol": protocol, "final": final_section(out), "frontier": frontier_section(out),
            "efficiency": efficiency_section(out), "density": density_section(out)}


def write_verdict_report(out: Path, report_dir: Path) -> Path:
    from rto.report import verdict_plots as plots
    from rto.report.verdict_markdown import render

    summary = build_summary(out)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_plain) + "\n")
    markdown = render(summary)
    (report_dir / "report.md").write_text(markdown)
    plots.plot_final(summary["final"], report_dir / "final.png")
    plots.plot_frontier(summary["frontier"], report_dir / "frontier.png")
    plots.plot_overoptimization(summary["frontier"], report_dir / "overoptimization.png")
    curves = {ARM_LABELS[arm]: [job.val_curve for job in arm_jobs(out, "final", arm) if job.val_curve]
              for arm in ("ppo", "rto")}
    plots.plot_efficiency(curves, WINDOW, report_dir / "efficiency.png")
    plots.plot_density(summary["density"], report_dir / "density.png")
    print(markdown)
    print(f"report written to {report_dir}")
    return report_dir


def _plain(value):
    """numpy scalars in the summary as plain numbers."""
    return value.item() if hasattr(value, "item") else str(value)
