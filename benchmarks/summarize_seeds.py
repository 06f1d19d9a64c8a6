"""Mean ± standard error over seeds of each policy's eval metrics, from `seeds_table.sh` run folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROWS = [("SFT", "token", "sft"), ("DPO", "token", "dpo"), ("PPO (sentence)", "sentence", "policy"),
        ("RTO (token)", "token", "policy")]
COLS = [("gold reward", "gold_reward"), ("KL to ref", "kl"), ("win rate vs SFT", "win_rate"),
        ("RM score", "rm_score")]


def main(root: Path) -> None:
    runs = {}
    for metrics_file in sorted(root.glob("seed*/*/metrics.json")):
        runs.setdefault(metrics_file.parent.name, []).append(json.loads(metrics_file.read_text()))
    n_seeds = min(len(v) for v in runs.values())
    lines = [f"Over {n_seeds} seeds (mean ± standard error across seeds)", "",
             "| policy | " + " | ".join(c for c, _ in COLS) + " |", "|---" * (len(COLS) + 1) + "|"]
    summary = {}
    for label, reward, policy in ROWS:
        cells = []
        for _, key in COLS:
            values = np.array([m[f"eval/{policy}/{key}"] for m in runs[reward]])
            se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
            summary[f"{label}/{key}"] = {"mean": float(values.mean()), "stderr": float(se),
                                         "per_seed": values.tolist()}
            cells.append(f"{values.mean():.3f} ± {se:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    rm_acc = [m["rm/val_accuracy"] for m in runs["token"]]
    lines += ["", f"reward-model held-out accuracy: {np.mean(rm_acc):.3f} (per seed {[round(a, 3) for a in rm_acc]})"]
    print("\n".join(lines))
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/seeds_table"))
