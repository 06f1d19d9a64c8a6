"""Do two versions of the code train to the same numbers? A refactor's equality check.

    python scripts/same_metrics.py --base <git ref>       # compare <ref> with the working tree
    python scripts/same_metrics.py --base <ref> --ignore grad_norm   # leave out keys a change adds

Runs, in a temporary worktree of `--base` and in this tree, with `deterministic=true`:
  1. `debug=tiny` (every stage at toy size, evaluation included),
  2. `stage=sft` at the default size,
then compares every metric each run logged (`metrics.json` and every row of `csv/metrics.csv`),
leaving out the `time/*` keys and throughput metrics (wall-clock readings). Exit 0 when all are
bit-identical, 1 otherwise, with the keys that differ.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"debug_tiny": ["debug=tiny"], "sft_default": ["stage=sft"]}
COMMON = ["deterministic=true", "cache.enabled=false", "logger=csv", "print_config=false", "threads=1"]
CLOCK_WORDS = ("time/", "seconds", "per_second", "memory/")  # clock times and memory peaks differ run to run


def is_clock(key: str) -> bool:
    return any(word in key for word in CLOCK_WORDS)


def run(tree: Path, out: Path, overrides: list[str], ignore: tuple[str, ...] = ()) -> dict:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1", PYTHONPATH=str(tree))
    subprocess.run([sys.executable, "-m", "rto.main", *overrides, *COMMON, f"hydra.run.dir={out}"],
                   cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    rows = []
    with open(out / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            kept = {k: v for k, v in row.items() if v != "" and not is_clock(k)}
            dropped = {k for k in kept if any(w in k for w in ignore)}
            if dropped and not set(kept) - dropped - {"epoch", "step"}:
                continue  # a row that logged only ignored keys is left out too
            rows.append({k: v for k, v in kept.items() if k not in dropped})
    return {"metrics": {k: v for k, v in metrics.items() if not is_clock(k) and not any(w in k for w in ignore)},
            "csv_rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git ref of the code to compare against")
    parser.add_argument("--keep", type=Path, help="write both sides' metrics as JSON into this folder")
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS), help="which runs to compare")
    parser.add_argument("--ignore", nargs="+", default=[], help="leave out the keys that contain any of these "
                        "(metrics a change adds, e.g. grad_norm): the rest must be identical")
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for name in args.runs:
                overrides = RUNS[name]
                before = run(base_tree, Path(tmp) / f"{name}-base", overrides, tuple(args.ignore))
                after = run(ROOT, Path(tmp) / f"{name}-here", overrides, tuple(args.ignore))
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    (args.keep / f"{name}.json").write_text(json.dumps({"base": before, "here": after}, indent=1))
                n_values = len(before["metrics"]) + sum(len(r) for r in before["csv_rows"])
                if before == after:
                    print(f"{name}: identical ({len(before['metrics'])} final metrics, "
                          f"{len(before['csv_rows'])} logged rows, {n_values} values)")
                    continue
                failed = True
                keys = sorted(k for k in set(before["metrics"]) | set(after["metrics"])
                              if before["metrics"].get(k) != after["metrics"].get(k))
                print(f"{name}: DIFFERENT final metrics {keys[:20]}; "
                      f"logged rows equal: {before['csv_rows'] == after['csv_rows']}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
