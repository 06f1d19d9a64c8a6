"""Wall time of the 6-job `experiment=ppo_vs_rto` sweep (2 rewards x 3 seeds) against one single run.

Both start from an empty stage cache and run side by side in this script (single, sweep, single, ...),
with the same overrides. Without the cache the sweep would cost about 6x a single run; with it, SFT,
RM and DPO train once per seed (3x) and only PPO and evaluation run 6x.

    python benchmarks/sweep_vs_single.py -- debug=tiny                  # toy scale, a few minutes
    python benchmarks/sweep_vs_single.py --launcher basic -- debug=tiny  # jobs one after another
    python benchmarks/sweep_vs_single.py                                # default run sizes (long)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["print_config=false", "logger=csv"]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rto.main", *cmd], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "WANDB_MODE": "offline"})
    return time.perf_counter() - start


def single(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        seconds = timed([*COMMON, "reward=token", "seed=0", f"hydra.run.dir={tmp}/run",
                         f"paths.cache_dir={tmp}/cache", *overrides])
        metrics = json.loads(Path(tmp, "run", "metrics.json").read_text())
    return {"seconds": seconds, "stage_seconds": {k: v for k, v in metrics.items() if k.startswith("time/")}}


def sweep(overrides: list[str], launcher: str, n_jobs: int) -> dict:
    launch = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"] if launcher == "joblib" else []
    with tempfile.TemporaryDirectory() as tmp:
        seconds = timed(["-m", "experiment=ppo_vs_rto", *COMMON, *launch, f"hydra.sweep.dir={tmp}/sweep",
                         f"paths.cache_dir={tmp}/cache", *overrides])
        jobs = [json.loads(p.read_text()) for p in sorted(Path(tmp, "sweep").glob("*/metrics.json"))]
    trained = {stage: sum(f"time/{stage}_seconds" in m for m in jobs) for stage in ("sft", "rm", "dpo", "ppo")}
    return {"seconds": seconds, "jobs": len(jobs), "stages_trained": trained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--launcher", choices=("joblib", "basic"), default="joblib")
    parser.add_argument("--n-jobs", type=int, default=2, help="joblib workers")
    parser.add_argument("--json", default="benchmarks/results/sweep_vs_single.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    singles, sweeps = [], []
    for _ in range(args.repeats):
        singles.append(single(args.overrides))
        sweeps.append(sweep(args.overrides, args.launcher, args.n_jobs))
    single_s = statistics.median(r["seconds"] for r in singles)
    sweep_s = statistics.median(r["seconds"] for r in sweeps)
    result = {"overrides": args.overrides, "launcher": args.launcher, "n_jobs": args.n_jobs,
              "cpu_count": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0], "singles": singles,
              "sweeps": sweeps, "single_seconds": single_s, "sweep_seconds": sweep_s, "ratio": sweep_s / single_s}
    print("| run | wall time (s) | stages trained |\n|---|---|---|")
    print(f"| single (reward=token seed=0) | {single_s:.1f} | sft, rm, dpo, ppo once |")
    trained = ", ".join(f"{k} {v}x" for k, v in sweeps[-1]["stages_trained"].items())
    print(f"| sweep, {sweeps[-1]['jobs']} jobs ({args.launcher}) | {sweep_s:.1f} | {trained} |")
    print(f"\nsweep / single = {result['ratio']:.2f} (without sharing: about 6; target: well under 6)")
    out = ROOT / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
