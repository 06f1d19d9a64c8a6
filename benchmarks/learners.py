"""Seconds per RL iteration of each learner at the same sampled responses, side by side.

    python benchmarks/learners.py                      # sentence reward, every learner, 6 alternations of 1 step
    python benchmarks/learners.py --reward token --threads 1 --repeats 8

Every learner runs the real module the RL recipe builds (`ours_worker.py rl algo=<learner>`), with the
project's defaults except the shapes (`shapes.py`): 64 sampled responses per iteration (PPO and
REINFORCE++: 64 prompts x 1; RLOO and GRPO: 16 prompts x 4), 24 new tokens, 4 passes over 2 minibatches
of 32. One worker process per learner keeps its models warm; the driver runs them chunk by chunk in a
rotating order after a warm-up chunk each, and reports medians and each learner's speed-up over PPO
(PPO median / learner median, and the median of the ratios of neighbouring chunks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from shapes import write_fixtures  # noqa: E402
from vs_trl import Worker, quartiles  # noqa: E402

LEARNERS = ("ppo", "reinforce_pp", "rloo", "grpo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward", default="sentence", choices=("sentence", "token"))
    parser.add_argument("--learners", nargs="*", default=list(LEARNERS))
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", default="benchmarks/results/learners.json")
    args = parser.parse_args()
    start = time.perf_counter()
    times: dict[str, list[float]] = {name: [] for name in args.learners}
    with tempfile.TemporaryDirectory() as tmp:
        total = args.warmup + args.repeats * args.steps + 2
        spec = {**write_fixtures(Path(tmp) / "fixtures", n_prompts=256), "threads": args.threads, "seed": 0,
                "total_steps": total}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        logs = HERE / "results" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        workers = [Worker(name, [sys.executable, str(HERE / "ours_worker.py"), "rl", str(spec_path), f"algo={name}",
                                 f"reward={args.reward}"], logs / f"learners_{name}.log", args.threads)
                   for name in args.learners]
        try:
            for worker in workers:
                worker.wait_ready()
                worker.run(args.warmup)
            for repeat in range(args.repeats):
                shift = repeat % len(workers)  # rotate who goes first: each sees the machine's drift alike
                for worker in workers[shift:] + workers[:shift]:
                    times[worker.name] += worker.run(args.steps)
                print(f"  repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                    f"{n} {statistics.median(t):.3f} s" for n, t in times.items()), flush=True)
        finally:
            for worker in workers:
                worker.stop()
    base = times.get("ppo")
    rows = ["| learner | median s/iteration (p25-p75) | speed-up over PPO (medians) | median of paired ratios |",
            "|---|---|---|---|"]
    summary = {}
    for name, t in times.items():
        p25, median, p75 = quartiles(t)
        speedup = statistics.median(base) / median if base else None
        paired = statistics.median(b / x for b, x in zip(base, t)) if base else None
        summary[name] = {"p25": p25, "median": median, "p75": p75, "speedup_over_ppo": speedup, "paired": paired}
        rows.append(f"| {name} | {median:.3f} ({p25:.3f}-{p75:.3f}) | "
                    f"{'-' if speedup is None else f'{speedup:.2f}x'} | {'-' if paired is None else f'{paired:.2f}x'} |")
    rows.append(f"\nreward={args.reward}, {spec['rollout_batch_size']} sampled responses per iteration, "
                f"{args.threads} torch thread(s) per learner, {args.repeats * args.steps} timed iterations each")
    md = "\n".join(rows)
    print("\n" + md)
    command = "python benchmarks/learners.py " + " ".join(sys.argv[1:])
    out = HERE.parent / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command.strip(), "seconds": time.perf_counter() - start,
                               "load_average": os.getloadavg(), "reward": args.reward, "learners": summary,
                               "times": times}, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"`{command.strip()}`\n\n{md}\n")
    print(f"\n{time.perf_counter() - start:.0f} s; wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
