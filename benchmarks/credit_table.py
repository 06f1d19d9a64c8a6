"""Credit assignment of DPO token rewards against DPO's beta and the number of preference pairs.

For every (data.n_pairs, dpo.beta) it trains SFT and DPO on the embedded task (`stage=sft`, then
`stage=dpo` in the same run folder; default model size; the stage cache shares SFT between betas), then computes the credit metric of the DPO
model (`python -m rto.credit`: Spearman and Pearson, per token, between ``log pi_dpo/pi_ref`` and the
gold per-word reward, over the SFT policy's responses to the held-out prompts). Writes a JSON file
and a Markdown table.

    nice -n 10 python benchmarks/credit_table.py                          # 3 betas x 2 sizes, seed 0
    python benchmarks/credit_table.py --betas 0.1 --n-pairs 1000 -- debug=tiny   # a smoke run
    python benchmarks/credit_table.py --reuse <runs of an earlier table>  # the metric again, no training

`--reuse` takes each cell's SFT and DPO checkpoints from the same cell of an earlier table's runs
(`sft.checkpoint=`, `dpo.checkpoint=`; `stage=dpo` then only loads them): the metric of the current
code (prompt set, sampling streams) on the same models.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def last_logged(folder: Path, key: str):
    """The last value of `key` in the run's CSV log (None if it was never logged)."""
    path = folder / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    with open(path) as f:
        values = [row[key] for row in csv.DictReader(f) if row.get(key)]
    return float(values[-1]) if values else None


def run(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def one_cell(out: Path, n_pairs: int, beta: float, seed: int, cache: Path, extra: list[str],
             reuse: Path | None = None) -> dict:
    name = f"pairs{n_pairs}_beta{beta:g}_seed{seed}"
    folder = out / name
    common = [f"dpo.beta={beta}", f"data.n_pairs={n_pairs}", f"seed={seed}", "logger=csv", "print_config=false",
              f"hydra.run.dir={folder}", f"paths.cache_dir={cache}", *extra]
    if reuse is not None:  # the earlier cell's models: stage=dpo loads them and trains nothing
        common += [f"{stage}.checkpoint={(reuse / name / 'checkpoints' / stage).resolve()}" for stage in ("sft", "dpo")]
    # stage=dpo reads SFT from the run folder: train it there first (a cache hit after the first beta)
    stages = ("dpo",) if reuse is not None else ("sft", "dpo")
    train_seconds = sum(run(["-m", "rto.main", f"stage={stage}", *common]) for stage in stages)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rto.credit", str(folder)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"rto.credit {folder} failed:\n{done.stderr[-3000:]}")
    credit = json.loads(done.stdout)
    return {"n_pairs": n_pairs, "dpo_beta": beta, "seed": seed, "folder": str(folder),
            "spearman": credit["credit/spearman"], "pearson": credit["credit/pearson"],
            "tokens": int(credit["credit/tokens"]),
            "dpo_val_reward_accuracy": last_logged(reuse / name if reuse is not None else folder,
                                                   "dpo/val_reward_accuracy"),
            "models_from": str(reuse / name) if reuse is not None else None,
            "train_seconds": round(train_seconds, 1), "credit_seconds": round(time.perf_counter() - start, 1)}


def markdown(rows: list[dict], betas: list[float], sizes: list[int]) -> str:
    """Spearman (Pearson) per cell: rows = preference pairs, columns = DPO beta."""
    cell = {(r["n_pairs"], r["dpo_beta"]): r for r in rows}
    lines = ["| preference pairs | " + " | ".join(f"dpo.beta={b:g}" for b in betas) + " |",
             "|---" * (len(betas) + 1) + "|"]
    for n in sizes:
        values = [cell[(n, b)] for b in betas]
        lines.append(f"| {n} | " + " | ".join(f"{r['spearman']:.3f} ({r['pearson']:.3f})" for r in values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.3])
    parser.add_argument("--n-pairs", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "credit_table", help="where the runs go")
    parser.add_argument("--cache", type=Path, help="stage cache (default: <runs>/cache)")
    parser.add_argument("--out", type=Path, default=RESULTS / "credit_table", help="writes <out>.json and <out>.md")
    parser.add_argument("--reuse", type=Path, help="an earlier table's --runs folder: its cells' SFT and DPO models")
    parser.add_argument("overrides", nargs="*", help="more `rto.main` overrides (after --)")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = [one_cell(args.runs, n, b, args.seed, args.cache or args.runs / "cache", args.overrides, args.reuse)
            for n in args.n_pairs for b in args.betas]
    wall = time.perf_counter() - start
    table = markdown(rows, args.betas, args.n_pairs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": " ".join(sys.argv), "overrides": args.overrides, "wall_seconds": round(wall, 1), "rows": rows},
        indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        f"Credit assignment of DPO token rewards (Spearman, Pearson in brackets), seed {args.seed}, "
        f"`{' '.join(sys.argv)}`, {wall:.0f} s wall\n\n{table}\n")
    print(table)
    print(f"\n{wall:.0f} s; written to {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
