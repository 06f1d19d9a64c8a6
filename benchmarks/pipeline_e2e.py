"""End-to-end wall time and peak memory of `python -m rto.main` (default: the default run).

Runs the real command in a subprocess `--repeats` times, reports the median wall time, the peak
resident memory of the child (ru_maxrss), the per-stage seconds the run logged and the PPO
sampler's rollout generation tokens per second (median over iterations).

    python benchmarks/pipeline_e2e.py                    # the default run, once
    python benchmarks/pipeline_e2e.py --repeats 3 -- reward=sentence
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rto.main", "print_config=false", "logger=csv", "cache.enabled=false",
                        f"hydra.run.dir={run_dir}", *overrides], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "WANDB_MODE": "offline"})
        seconds = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        tokens_per_second = rollout_tokens_per_second(Path(run_dir) / "csv" / "metrics.csv")
    return {"seconds": seconds, "peak_rss_mib": max(peak_kib, before) / 1024,
            "stage_seconds": {k: v for k, v in metrics.items() if k.startswith("time/")},
            "gold_reward": metrics.get("eval/policy/gold_reward"),
            "rollout_tokens_per_second": tokens_per_second}


def rollout_tokens_per_second(csv_path: Path) -> float | None:
    """Median over PPO iterations of the sampler's generated tokens per second (logged by PPOModule)."""
    with csv_path.open() as f:
        rates = [float(row["ppo/rollout_tokens_per_second"]) for row in csv.DictReader(f)
                 if row.get("ppo/rollout_tokens_per_second")]
    return statistics.median(rates) if rates else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/pipeline_e2e.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs = [run_once(args.overrides) for _ in range(args.repeats)]
    result = {"overrides": args.overrides, "cpu_count": os.cpu_count(), "runs": runs,
              "median_seconds": statistics.median(r["seconds"] for r in runs),
              "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}
    print("| run | wall time (s) | peak RSS (MiB) | rollout tokens/s | stages (s) |\n|---|---|---|---|---|")
    for i, r in enumerate(runs):
        stages = ", ".join(f"{k.removeprefix('time/').removesuffix('_seconds')} {v:.0f}"
                           for k, v in r["stage_seconds"].items())
        rate = r["rollout_tokens_per_second"]
        print(f"| {i} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {'-' if rate is None else f'{rate:.0f}'} "
              f"| {stages} |")
    print(f"\nmedian {result['median_seconds']:.1f} s, peak {result['peak_rss_mib']:.0f} MiB "
          f"(target: < 300 s on 2 CPU cores)")
    out = ROOT / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
