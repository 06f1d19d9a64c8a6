"""Load time and memory of the PPO stage's models on SmolLM2-135M (GGUF) with LoRA: the file read
once per process, frozen copies sharing one set of weights (`rto/models/pretrained_cache.py`).

    python benchmarks/shared_weights.py                      # variants shared and copies
    python benchmarks/shared_weights.py --variants shared copies uncached
    python benchmarks/shared_weights.py --model smollm2-135m-gguf --lora none   # full fine-tuning

Each variant is a fresh process that builds, with the pipeline's own factory, what a `reward=token`
PPO stage holds: the SFT policy (PPO's reference; pretrained + LoRA, saved as an adapter), the DPO
model and the PPO actor (loaded from that adapter), the reward model from the SFT backbone (its
LoRA merged when saved) and the critic on the reward model. Variants:

- `shared`: the code as it is: the GGUF file parsed once, the LoRA bases one set of weights, the
  critic's frozen backbone the reward model's;
- `copies`: the file still parsed once, but every model holds its own copy (`share_frozen_weights(False)`);
- `uncached`: every load parses the file again and nothing is shared (the code before the cache).

Reported per variant: seconds of the first and the second policy load and tokenizer load (the first
parses the file), the process's peak RSS while the models are built (VmHWM, reset after the first
load so that its transient parse memory is left out, then the peak over the whole process too),
its RSS with all models alive, and the bytes of the distinct parameter tensors the models hold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this checkout's rto, not an installed one
LORA = "{r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}"
PREFIX = "@@RESULT "


def memory_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM back to the current RSS


def distinct_parameter_mib(models: dict) -> dict:
    """MiB of parameters per model, and of the distinct storages all of them hold together."""
    seen, total, per_model = set(), 0, {}
    for name, model in models.items():
        per_model[name] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
        for p in model.parameters():
            ptr = p.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += p.untyped_storage().nbytes()
    return {"per_model_mib": per_model, "distinct_mib": total / 2 ** 20}


def worker(variant: str, model: str, lora: str, threads: int) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    import rto.config  # noqa: F401 - registers the ${package_dir:...} resolver the GGUF preset uses
    from rto.models import factory, pretrained_cache
    from rto.models.factory import build_policy, load_policy, load_tokenizer, save_policy
    from rto.models.reward import new_critic, new_reward_model

    torch.set_num_threads(threads)
    if variant in ("copies", "uncached"):
        pretrained_cache.share_frozen_weights(False)
    if variant == "uncached":
        factory.cached_load = lambda load, loader, source, share, **kwargs: pretrained_cache.dense(
            load(loader, source, **kwargs))
    overrides = [f"model={model}", "reward=token", f"threads={threads}"] + ([f"model.lora={lora}"] if lora else [])
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    seconds = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = time.perf_counter() - start
        return out

    tok = timed("tokenizer_first", load_tokenizer, cfg.model)
    timed("tokenizer_second", load_tokenizer, cfg.model)
    sft = timed("policy_first", build_policy, cfg.model, tok)
    peak_first_load = memory_mib("VmHWM")
    reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        save_policy(sft, tok, Path(tmp) / "sft")
        actor = timed("policy_second", load_policy, Path(tmp) / "sft", cfg.model)
        dpo = timed("policy_third", load_policy, Path(tmp) / "sft", cfg.model)
        rm = new_reward_model(cfg.reward_model, cfg.model, sft)
        rm.save_pretrained(Path(tmp) / "rm")  # a LoRA reward model is merged here, as the RM stage saves it
        critic = new_critic(cfg.reward_model, cfg.model, Path(tmp) / "rm", Path(tmp) / "sft", tok, tok, rm)
    models = {"reference (SFT)": sft, "actor": actor, "dpo": dpo, "reward_model": rm, "critic": critic}
    return {"variant": variant, "seconds": seconds, "peak_rss_first_load_mib": peak_first_load,
            "peak_rss_building_mib": memory_mib("VmHWM"), "rss_models_alive_mib": memory_mib("VmRSS"),
            **distinct_parameter_mib(models), "torch_threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["shared", "copies"], choices=["shared", "copies", "uncached"])
    parser.add_argument("--model", default="smollm2-135m-gguf")
    parser.add_argument("--lora", default=LORA, help="a model.lora value, or `none` (full fine-tuning)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/results/shared_weights.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    lora = None if args.lora == "none" else args.lora
    if args.worker:
        print(PREFIX + json.dumps(worker(args.worker, args.model, lora, args.threads)), flush=True)
        return
    results = []
    for variant in args.variants:  # one at a time: each is measured alone
        proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--model", args.model, "--lora",
                               args.lora, "--threads", str(args.threads)], cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
        if proc.returncode or not lines:
            raise SystemExit(f"{variant} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len(PREFIX):]))
        print(json.dumps(results[-1]), flush=True)
    rows = ["| variant | tokenizer 1st / 2nd (s) | policy load 1st / 2nd / 3rd (s) | peak RSS building (MiB) | "
            "RSS, models alive (MiB) | distinct parameters (MiB) |", "|---|---|---|---|---|---|"]
    for r in results:
        s = r["seconds"]
        rows.append(f"| {r['variant']} | {s['tokenizer_first']:.1f} / {s['tokenizer_second']:.2f} | "
                    f"{s['policy_first']:.1f} / {s['policy_second']:.2f} / {s['policy_third']:.2f} | "
                    f"{r['peak_rss_building_mib']:.0f} | {r['rss_models_alive_mib']:.0f} | {r['distinct_mib']:.0f} |")
    command = "python benchmarks/shared_weights.py " + " ".join(sys.argv[1:])
    md = "\n".join(rows) + f"\n\n`{command.strip()}`, {args.threads} torch threads\n"
    print("\n" + md)
    out = ROOT / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command.strip(), "results": results}, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
