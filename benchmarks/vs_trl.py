"""Our PPO iteration and DPO step against Hugging Face TRL at equal work, side by side.

    python benchmarks/vs_trl.py            # full: PPO (sentence, token) vs TRL 0.23.1, DPO, GRPO, RLOO vs current TRL
    python benchmarks/vs_trl.py --quick    # 3 alternations of 1 step: meant for under 2 minutes on an idle 2-core CPU
    python benchmarks/vs_trl.py --only dpo --repeats 10
    python benchmarks/vs_trl.py --only ppo_smollm2 --repeats 6 --steps 1   # SmolLM2-135M + LoRA (not in the default run)

Each side runs in its own process (ours in this venv, TRL's in `benchmarks/.venv-trl*`, which
this script creates on first use: TRL is not a dependency of the project) and keeps its trainer
alive; the driver alternates them chunk by chunk (`--steps` steps each), after one warm-up chunk,
and reports medians, the spread (25th-75th percentile) and the ratio TRL median / our median.
Same files (tokenizer, GPT-2 checkpoint, prompts, pairs: `shapes.py`; for `ppo_smollm2` the GGUF
model and prompt ids of `smollm2_spec.py`), same shapes, same threads.
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
# this checkout's rto first (a venv may hold another checkout's editable install)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from shapes import write_fixtures  # noqa: E402
from smollm2_spec import SHAPES as SMOLLM2_SHAPES, write_smollm2_spec  # noqa: E402
from step_clock import TIMES_PREFIX  # noqa: E402

# TRL 0.23.1 is the last release whose PPOTrainer is a regular trainer; it needs transformers<4.57
# (folder, packages, modules that must import: a venv made before a package joined the list gets it)
VENVS = {
    # peft and gguf: `ppo_smollm2` (LoRA, the GGUF model)
    "ppo": (HERE / ".venv-trl", ["trl==0.23.1", "transformers<4.57", "peft", "gguf"], ["trl", "peft", "gguf"]),
    # current TRL (1.x): DPOTrainer, GRPOTrainer, RLOOTrainer
    "current": (HERE / ".venv-trl-dpo", ["trl"], ["trl"]),
}
WORKS = {  # work -> (our worker args, TRL worker's work, target ratio)
    "ppo_sentence": (["ppo_sentence"], "ppo", 1.5),
    "ppo_token": (["ppo_token"], "ppo", 1.2),  # ours does one more forward (the DPO model); TRL has no token reward
    # both compute the reference log-probs in every step (TRL's default)
    "dpo": (["dpo", "dpo.precompute_ref=false"], "dpo", 1.3),
    # both compute them once before training (our default `dpo.precompute_ref=true`; TRL's precompute_ref_log_probs)
    "dpo_precomputed": (["dpo", "dpo.precompute_ref=true"], "dpo_precomputed", 1.3),
    # critic-free, sentence reward: 16 prompts x 4 samples, one update pass, a reference model and beta 0.1 on
    # both sides (GRPO: k3 KL loss term; RLOO: k1 KL in the reward)
    "grpo": (["grpo"], "grpo", 1.5),
    "rloo": (["rloo"], "rloo", 1.5),
    # SmolLM2-135M-Instruct (GGUF) with LoRA, 16 prompts x 32 new tokens, 2 epochs over minibatches of 8
    # (`smollm2_spec.py`); minutes per step on a CPU, so only when asked (`--only ppo_smollm2`)
    "ppo_smollm2": (["ppo_smollm2"], "ppo_smollm2", 1.5),
}
DEFAULT_WORKS = [w for w in WORKS if w != "ppo_smollm2"]
TRL_PPO_WORKS = ("ppo", "ppo_smollm2")  # TRL worker works that run TRL 0.23.1's PPOTrainer (the "ppo" venv)


def ensure_venv(kind: str) -> Path:
    folder, packages, modules = VENVS[kind]
    python = folder / "bin" / "python"
    if not python.exists():
        print(f"creating {folder} (once) with {' '.join(packages)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        # torch first, pinned: the CPU build, and the same torch as ours
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    elif subprocess.run([str(python), "-c", f"import {', '.join(modules)}"], capture_output=True).returncode:
        print(f"installing {' '.join(packages)} into {folder}", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return python


class Worker:
    """A worker process paused between chunks of training steps (see step_clock.py)."""

    def __init__(self, name: str, argv: list[str], log: Path, threads: int):
        self.name = name
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
        self.log = open(log, "w")
        # both sides start (imports, model loading) at the same time; timing begins after both are ready
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, cwd=HERE.parent, env=env)

    def wait_ready(self) -> "Worker":
        self._read_until("@@READY")
        return self

    def _read_until(self, prefix: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):]
            self.log.write(line)
        self.log.flush()
        raise RuntimeError(f"{self.name} worker exited (code {self.proc.wait()}); see {self.log.name}")

    def run(self, steps: int) -> list[float]:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        return json.loads(self._read_until(TIMES_PREFIX))

    def stop(self) -> None:
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)
        self.log.close()


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def compare(work: str, spec_path: Path, spec: dict, args, logs: Path) -> dict:
    ours_arg, trl_arg, target = WORKS[work]
    trl_python = ensure_venv("ppo" if trl_arg in TRL_PPO_WORKS else "current")
    our_work, *our_overrides = ours_arg
    print(f"\n== {work}: starting workers", flush=True)
    ours = Worker("ours", [sys.executable, str(HERE / "ours_worker.py"), our_work, str(spec_path), *our_overrides, *args.ours],
                  logs / f"{work}_ours.log", spec["threads"])
    trl = Worker("trl", [str(trl_python), str(HERE / "trl_worker.py"), trl_arg, str(spec_path)],
                 logs / f"{work}_trl.log", spec["threads"])
    times = {"ours": [], "trl": []}
    try:
        ours.wait_ready(), trl.wait_ready()
        for worker in (ours, trl):
            worker.run(args.warmup)  # first steps pay for allocator warm-up and lazy init
        for repeat in range(args.repeats):
            pair = (ours, trl) if repeat % 2 == 0 else (trl, ours)
            for worker in pair:
                times[worker.name] += worker.run(args.steps)
            print(f"  repeat {repeat + 1}/{args.repeats}: ours {statistics.median(times['ours']):.3f} s, "
                  f"trl {statistics.median(times['trl']):.3f} s (medians so far)", flush=True)
    finally:
        ours.stop()
        trl.stop()
    summary = {side: dict(zip(("p25", "median", "p75"), quartiles(t)), n=len(t)) for side, t in times.items()}
    ratio = summary["trl"]["median"] / summary["ours"]["median"]
    # neighbours in time share the machine's load: their ratios cancel slow drift in a shared machine
    paired = statistics.median(t / o for t, o in zip(times["trl"], times["ours"]))
    return {"work": work, "ours": summary["ours"], "trl": summary["trl"], "speedup": ratio,
            "paired_speedup": paired, "target": target, "met": ratio >= target, "times": times}


def table(results: list[dict], threads: int) -> str:
    rows = ["| work | ours: median s/step (p25-p75) | TRL: median s/step (p25-p75) | speed-up (TRL / ours) "
            "| median of paired ratios | target |", "|---|---|---|---|---|---|"]
    for r in results:
        fmt = lambda s: f"{s['median']:.3f} ({s['p25']:.3f}-{s['p75']:.3f})"  # noqa: E731
        rows.append(f"| {r['work']} | {fmt(r['ours'])} | {fmt(r['trl'])} | **{r['speedup']:.2f}x** | "
                    f"{r['paired_speedup']:.2f}x | "
                    f">= {r['target']}x {'met' if r['met'] else 'NOT met'} |")
    rows.append(f"\n{threads} torch thread(s) per side, {len(results[0]['times']['ours'])} timed steps per side")
    for r in results:
        rows.append(f"- {r['work']}: {r['setting']}")
    return "\n".join(rows)


def setting(spec: dict) -> str:
    """One line on what a work ran: model, rollout shape, update."""
    shape = (f"{spec['rollout_batch_size']} responses x {spec['max_new_tokens']} new tokens, {spec['ppo_epochs']} PPO "
             f"epochs over minibatches of {spec['minibatch_size']}")
    if spec.get("kind") == "smollm2":
        lora = spec["lora"]
        return (f"{spec['model_name']} ({spec['gguf_file'] or spec['model_dir']}), LoRA r={lora['r']} alpha={lora['alpha']} "
                f"on {lora['target_modules']}, prompts of {spec['prompt_tokens']} tokens (padded), {shape}, "
                f"every response full length")
    return f"GPT-2 {spec['n_params'] / 1e6:.2f}M parameters per model, {shape} (DPO: {spec['dpo_pairs']} pairs per step)"


def write_spec(kind: str, folder: Path, args) -> tuple[Path, dict]:
    """The spec file both workers of a work read: `gpt2` (`shapes.py`) or `smollm2` (`smollm2_spec.py`)."""
    common = {"threads": args.threads, "seed": 0, "total_steps": args.warmup + args.repeats * args.steps + 2}
    if kind == "smollm2":
        shapes = {"rollout_batch_size": args.smollm2_prompts, "max_new_tokens": args.smollm2_new_tokens,
                  "ppo_epochs": args.smollm2_epochs, "minibatch_size": args.smollm2_minibatch}
        spec = write_smollm2_spec(folder / kind, shapes=shapes, overrides=tuple(args.smollm2_overrides), **common)
    else:
        spec = {**write_fixtures(folder / kind, n_prompts=256), **common}
    spec["trl_compile"] = args.trl_compile
    spec["trl_bf16"] = args.trl_bf16
    spec["trl_autocast"] = args.trl_autocast
    path = folder / f"{kind}_spec.json"
    path.write_text(json.dumps(spec))
    return path, spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 alternations of 1 step per side")
    parser.add_argument("--only", choices=list(WORKS), nargs="*", default=DEFAULT_WORKS,
                        help="works to run (default: all but ppo_smollm2)")
    parser.add_argument("--repeats", type=int, default=8, help="alternations ours/TRL")
    parser.add_argument("--steps", type=int, default=2, help="steps per side per alternation")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", help="default: benchmarks/results/vs_trl.json (vs_trl_smollm2.json for ppo_smollm2 alone)")
    parser.add_argument("--ours", nargs="*", default=[], help="extra Hydra overrides for our side")
    parser.add_argument("--trl-compile", action="store_true",
                        help="TRL's side with torch_compile=True (its TrainingArguments), to set against --ours compile=true")
    parser.add_argument("--trl-bf16", action="store_true",
                        help="TRL's side with bf16=True (its TrainingArguments; in TRL 0.23.1's PPO only the update's "
                             "forwards run under autocast), to set against --ours trainer.precision=bf16-mixed")
    parser.add_argument("--trl-autocast", action="store_true",
                        help="TRL's whole iteration (generation and frozen forwards too) under torch.autocast(cpu, bf16)")
    small = parser.add_argument_group("ppo_smollm2 shapes (defaults: the issue's setting; smaller ones to check the pair)")
    small.add_argument("--smollm2-prompts", type=int, default=SMOLLM2_SHAPES["rollout_batch_size"])
    small.add_argument("--smollm2-new-tokens", type=int, default=SMOLLM2_SHAPES["max_new_tokens"])
    small.add_argument("--smollm2-epochs", type=int, default=SMOLLM2_SHAPES["ppo_epochs"])
    small.add_argument("--smollm2-minibatch", type=int, default=SMOLLM2_SHAPES["minibatch_size"])
    small.add_argument("--smollm2-overrides", nargs="*", default=[],
                       help="Hydra overrides of the model (tests: `model=hf model.pretrained=<folder>`)")
    args = parser.parse_args()
    ours_bf16 = any(o.replace(" ", "") in ("trainer.precision=bf16-mixed", "trainer.precision=bf16") for o in args.ours)
    if (args.trl_bf16 or args.trl_autocast) != ours_bf16:
        print("warning: one side in bf16 and the other in fp32 (--trl-bf16 / --trl-autocast against --ours "
              "trainer.precision=bf16-mixed): not a comparison at equal precision", file=sys.stderr)
    if args.quick:
        args.repeats, args.steps, args.warmup = 3, 1, 1
    args.json = args.json or ("benchmarks/results/vs_trl_smollm2.json" if args.only == ["ppo_smollm2"]
                              else "benchmarks/results/vs_trl.json")
    start = time.perf_counter()
    specs = {}
    with tempfile.TemporaryDirectory() as tmp:
        logs = HERE / "results" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        results = []
        for work in args.only:
            kind = "smollm2" if work == "ppo_smollm2" else "gpt2"
            if kind not in specs:
                specs[kind] = write_spec(kind, Path(tmp), args)
            spec_path, spec = specs[kind]
            extras = [f"ours: {' '.join(args.ours)}"] if args.ours else []
            extras += ["TRL: bf16=True"] if args.trl_bf16 else []
            extras += ["TRL: the whole iteration under torch.autocast(cpu, bf16)"] if args.trl_autocast else []
            extras += ["TRL: torch_compile=True"] if args.trl_compile else []
            results.append({**compare(work, spec_path, spec, args, logs),
                            "setting": "; ".join([setting(spec), *extras])})
    md = table(results, args.threads)
    print("\n" + md)
    out = HERE.parent / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/vs_trl.py " + " ".join(sys.argv[1:])
    hidden = ("model", "prompts", "pairs", "prompt_ids", "tokenizer")  # temporary files
    out.write_text(json.dumps({"command": command.strip(), "seconds": time.perf_counter() - start,
                               "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                               "spec": {kind: {k: v for k, v in spec.items() if k not in hidden}
                                        for kind, (_, spec) in specs.items()},
                               "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"`{command.strip()}`\n\n{md}\n")
    print(f"\n{time.perf_counter() - start:.0f} s; wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
