"""`report.md` of the verdict, rendered from `summary.json` alone: every number the Markdown shows is
in the summary (a test checks it)."""

from __future__ import annotations

import math
from typing import Optional

COLUMN_NAMES = {"gold_reward": "gold", "gold_fraction": "gold / optimum", "kl": "KL to ref",
                "win_rate": "win rate vs SFT", "tie_rate": "ties with SFT", "rm_score": "RM score",
                "response_length": "length", "distinct_ratio": "distinct words"}


def num(x: Optional[float]) -> str:
    """"–": not measured (None); "n/a": measured but undefined (NaN: a p-value of one seed, or of
    differences without spread)."""
    if x is None:
        return "–"
    return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.3f}"


def mean_se(s: Optional[dict]) -> str:
    if not s:
        return "–"
    return num(s["mean"]) if s.get("se") is None or math.isnan(s["se"]) else f"{num(s['mean'])} ± {num(s['se'])}"


def paired_cells(d: Optional[dict]) -> str:
    """mean ± s.e. | each seed's difference (seed: value), and the seeds left out | p."""
    if not d:
        return "– | – | –"
    per_seed = ", ".join(f"{seed}: {num(x)}" for seed, x in zip(d["seeds"], d["diffs"]))
    if d.get("missing"):
        per_seed += f" (seeds {', '.join(str(s) for s in d['missing'])} missing on one side)"
    return f"{mean_se(d)} | {per_seed} | {num(d['p'])}"


def final_table(final: dict) -> list[str]:
    keys = [k for k in COLUMN_NAMES if any(k in row for row in final["rows"].values())]
    lines = ["| policy | seeds | " + " | ".join(COLUMN_NAMES[k] for k in keys) + " |", "|---" * (2 + len(keys)) + "|"]
    for label, row in final["rows"].items():
        n = max((s["n"] for s in row.values()), default=0)
        lines.append(f"| {label} | {n} | " + " | ".join(mean_se(row.get(k)) for k in keys) + " |")
    lines += ["", "Paired by seed (same seeds, same SFT, RM and DPO models per seed):", "",
              "| difference in gold | mean ± s.e. | per seed | paired t-test p |", "|---|---|---|---|"]
    lines += [f"| {name} | {paired_cells(d)} |" for name, d in final["paired"].items()]
    return lines


def frontier_table(frontier: dict) -> list[str]:
    if not frontier["grid"]:
        return ["The arms' KL ranges do not overlap: no equal-KL comparison (widen the beta sweep)."]
    arms = list(frontier["at_kl"])
    lines = ["| KL | " + " | ".join(arms) + " | RTO - PPO (p) | RTO - DPO (p) |", "|---" * (3 + len(arms)) + "|"]
    for i, kl in enumerate(frontier["grid"]):
        cells = [mean_se(frontier["at_kl"][arm][i]) for arm in arms]
        diffs = [f"{mean_se(d)} ({num(d['p'])})" if (d := frontier["paired"][name][i]) else "–"
                 for name in ("RTO - PPO", "RTO - DPO")]
        lines.append(f"| {num(kl)} | " + " | ".join(cells + diffs) + " |")
    return lines


def efficiency_table(eff: dict) -> list[str]:
    arms = list(eff["arms"])
    lines = ["| target | " + " | ".join(f"{a}: responses (reached)" for a in arms) + " | RTO / PPO |",
             "|---" * (2 + len(arms)) + "|"]
    for i, target in enumerate(eff["targets"]):
        cells = []
        for arm in arms:
            row = eff["arms"][arm][i]
            value = mean_se(row) if "mean" in row else "not within the budget"
            cells.append(f"{value} ({row['reached']}/{row['seeds']})")
        ratio = eff["ratio"][i]
        lines.append(f"| {target['name']} ({num(target['value'])}) | " + " | ".join(cells) + f" | {num(ratio)} |")
    return lines


def density_table(density: dict) -> list[str]:
    lines = ["| variant | gold | minus PPO (sentence), paired | per seed | p | minus the next variant down, paired "
             "| per seed | p |", "|---|---|---|---|---|---|---|---|"]
    for label in density["ordering"]:
        lines.append(f"| {label} | {mean_se(density['variants'][label])} | "
                     f"{paired_cells(density['paired_vs_sentence'].get(label))} | "
                     f"{paired_cells(density.get('paired_vs_next', {}).get(label))} |")
    return lines


def protocol_line(protocol: dict) -> str:
    """The settings each step ran with (its own record; the file's top level holds the latest call's)."""
    def setting(step: str, key: str):
        values = {str(e[key]) for e in protocol.get("steps", []) if e["step"] == step and key in e}
        return ", ".join(sorted(values)) if values else str(protocol.get(key, "?"))

    # a record without first_seed predates it: those final steps ran seeds from 0
    finals = [e for e in protocol.get("steps", []) if e["step"] == "final"]
    first = int(finals[-1].get("first_seed", 0)) if finals else 0
    seeds = setting("final", "seeds")
    seed_range = f"seeds {first}-{first + int(seeds) - 1}" if seeds.isdigit() else f"{seeds} seeds"
    more = (f"; {protocol['more_seeds']} more seeds added, RTO - PPO not being significant on validation prompts"
            if protocol.get("more_seeds") else "")
    return (f"Protocol: {setting('tune', 'trials')} Optuna trials per arm on validation prompts (seed 0), then each "
            f"arm's best config over {seed_range} on test prompts{more}; frontier beta values "
            f"{setting('frontier', 'betas')}; wall time {num(protocol.get('seconds'))} s.")


def render(summary: dict) -> str:
    protocol = summary["protocol"]
    eff = summary["efficiency"]
    parts = [
        "# Does RTO beat PPO? The verdict", "",
        protocol_line(protocol), "",
        "## Final table (test prompts, mean ± s.e. over seeds)", "", *final_table(summary["final"]), "",
        "![final](final.png)", "",
        "## At equal KL (test prompts; gold interpolated along each arm's beta sweep)", "",
        *frontier_table(summary["frontier"]), "", "![frontier](frontier.png)", "",
        "![over-optimisation](overoptimization.png)", "",
        f"## Sample efficiency (validation subset; curves smoothed over {eff['window']} points)", "",
        *efficiency_table(eff), "", "![validation gold against sampled responses](efficiency.png)", "",
        "## Density (test prompts, at RTO's tuned config)", "", *density_table(summary["density"]), "",
        "![density](density.png)", "",
    ]
    return "\n".join(parts)
