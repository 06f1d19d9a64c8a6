"""The chain on GPUs, as a user runs it: `trainer=gpu` end to end (the README's first command, and LoRA
on a pretrained model and real-data files), and, where the machine has 2 or more GPUs, `trainer=fsdp`
for SFT, RM and DPO followed by the RL stage and evaluation under `trainer=gpu` in the same run folder
(FSDP does not train the RL stage, nor shard over one device: `rto.config_stages`, `rto.preflight`).

    python benchmarks/gpu_pipeline_check.py --out DIR             # on a GPU machine
    python benchmarks/gpu_pipeline_check.py --out DIR --smoke     # on a CPU: tiny, FSDP over 2 gloo ranks
    python benchmarks/gpu_pipeline_check.py --out DIR --only gpu_default_token

Each step is the real entry point's checks and stages on the real config (`hydra.compose`), in its own
process (its own CUDA context and peak memory); a variant's steps share one run folder, and no variant
reads another's checkpoints.

Writes `DIR/gpu_pipeline_check.json` (every step: exit status, seconds, peak GPU memory, the first PPO
minibatch's `max |pi/pi_old - 1|` and `max |V - V_old|`, every metric, each checkpoint's tensor names
and any FSDP-named ones, the last 400 lines of its log) and `DIR/gpu_pipeline_check.md`, both
rewritten after every step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSDP = ["trainer=fsdp", "trainer.devices=2"]
# LoRA needs a pretrained base and text its tokenizer reads: a tiny Llama chat model and an
# UltraFeedback-style JSONL file that the script writes (save_pretrained / to_json), read back as a user's
LORA = ["debug=tiny", "model=hf", "model.pretrained={tiny_model}", "data=ultrafeedback", "data.path={pairs}",
        "data.sft_path=null", "data.test_split=null", "data.max_prompt_tokens=32", "data.max_response_tokens=12",
        "data.n_test_prompts=4", "data.test_prompt_fraction=0.2", "data.val_prompt_fraction=0.1",
        "data.val_fraction=0.2", "model.gradient_checkpointing=true",
        "model.lora={r:4,alpha:8,dropout:0.0,target_modules:all-linear}"]
README_CMD = ["reward=token", "beta=0.1", "logger=csv"]  # the README's first command
# name -> (steps, each a list of overrides; seconds allowed per step; GPUs it needs), run in this order
VARIANTS = {
    "gpu_default_token": ([["trainer=gpu", *README_CMD]], 240, 1),
    "gpu_lora_real_data": ([["trainer=gpu", *LORA, "reward=token"]], 120, 1),
    "fsdp_stages_then_gpu": ([[*FSDP, *README_CMD, f"stage={stage}"] for stage in ("sft", "rm", "dpo")]
                             + [["trainer=gpu", *README_CMD]], 150, 2),
}
# on a CPU: tiny sizes, FSDP over gloo through the tests' CPU subclass of Lightning's strategy
SMOKE = {"trainer=gpu": ["trainer=cpu"],
         "trainer=fsdp": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true",
                          "trainer.strategy._target_=tests.cpu_fsdp.CPUFSDPStrategy",
                          "+trainer.strategy.process_group_backend=gloo"]}


def checkpoint_tensors(folder: Path) -> dict:
    """Per stage: how many tensors its checkpoint holds, and the names that carry FSDP's wrapping
    (`_fsdp_wrapped_module`, `_flat_param`): a checkpoint written from a wrapped model must name its
    tensors as an unwrapped one does, or loading it back would leave weights at their initial values."""
    from safetensors import safe_open

    stages = {}
    for stage in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names = []
        for file in sorted(stage.rglob("*.safetensors")):
            with safe_open(str(file), "pt") as tensors:
                names += [f"{file.relative_to(stage)}:{key}" for key in tensors.keys()]
        stages[stage.name] = {"tensors": len(names), "names": sorted(names),
                              "fsdp_names": [n for n in names if "_fsdp" in n or "flat_param" in n]}
    return stages


def worker(out: Path, result_path: Path, overrides: list[str]) -> None:
    """One step, in this process: compose, check, spy on the first PPO minibatch, run, write the result."""
    sys.path.insert(0, str(ROOT))
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from rto.config import validate
    from rto.pipeline import run
    from rto.preflight import preflight
    from rto.rl.first_minibatch import record_first_minibatch

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.cache_dir = str(out / "cache")
    first = record_first_minibatch()
    start = time.perf_counter()
    validate(cfg)
    preflight(cfg)
    metrics = run(cfg)  # the entry point's `train`, returning every metric rather than the sweeper's one
    result = {"seconds": time.perf_counter() - start, "first_minibatch": first,
              "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
              "checkpoints": checkpoint_tensors(out / "checkpoints")}
    if torch.cuda.is_available():
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["device"] = torch.cuda.get_device_name()
    if os.environ.get("LOCAL_RANK", "0") == "0":  # Lightning re-runs this command for its other ranks
        result_path.write_text(json.dumps(result, indent=1))


def run_step(out: Path, index: int, overrides: list[str], seconds: int) -> dict:
    result_path = out.parent / f"{out.name}.step{index}.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, __file__, "--worker", str(out), str(result_path), *overrides]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds, env=env, cwd=ROOT)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as stopped:
        rc, log = "timeout", (stopped.stdout or b"").decode() + (stopped.stderr or b"").decode()
    record = {"step": index, "overrides": overrides, "rc": rc, "wall_seconds": time.perf_counter() - start,
              "log_tail": log.splitlines()[-400:]}
    if result_path.exists():
        record.update(json.loads(result_path.read_text()))
    return record


def eval_figures(metrics: dict) -> str:
    """The RL policy's test gold reward and KL to the reference (the embedded task; real data has no gold)."""
    if "eval/policy/gold_reward" not in metrics:
        return "-"
    return f"{metrics['eval/policy/gold_reward']:.3f} (KL {metrics['eval/policy/kl']:.2f})"


def table(records: list[dict]) -> str:
    lines = ["| variant | step | exit | s | peak GPU GiB | first minibatch max abs(ratio - 1) | max abs(V - V_old) "
             "| RL policy's test gold (KL) | checkpoint tensors (FSDP-named) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        first = r.get("first_minibatch", {})
        stages = ", ".join(f"{k} {v['tensors']} ({len(v['fsdp_names'])})" for k, v in r.get("checkpoints", {}).items())
        trainer = next((o for o in r["overrides"] if o.startswith("trainer=")), "")
        stage = next((o for o in r["overrides"] if o.startswith("stage=")), "stage=all")
        lines.append(f"| {r['name']} | {trainer} {stage} | {r['rc']} | {r.get('seconds', r['wall_seconds']):.1f} | "
                     f"{r.get('peak_gpu_gib', float('nan')):.2f} | {first.get('ratio', '-')} | "
                     f"{first.get('values', '-')} | {eval_figures(r.get('metrics', {}))} | {stages or '-'} |")
    return "\n".join(lines) + "\n"


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where gpu_pipeline_check.json and .md go")
    parser.add_argument("--work", type=Path, help="the variants' run folders (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="on a CPU: FSDP over gloo, debug=tiny")
    parser.add_argument("--only", nargs="*", help="variant names (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_pipeline_check_"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from tests.real_assets import save_tiny_llama, write_preference_sets

    assets = {"tiny_model": save_tiny_llama(work / "tiny_chat_llama"),
              "pairs": write_preference_sets(work / "pairs")["ultrafeedback"]}
    records = []
    gpus = 0 if args.smoke else gpu_count()
    for name, (steps, seconds, needs) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        if not args.smoke and gpus < needs:
            print(f"{name}: skipped ({needs} GPUs needed, {gpus} here)", flush=True)
            continue
        out = work / name
        shutil.rmtree(out, ignore_errors=True)  # a fresh run folder: nothing of an earlier run is reused
        for index, overrides in enumerate(steps):
            if args.smoke:
                overrides = ["debug=tiny"] + [o for given in overrides for o in SMOKE.get(given, [given])]
            for key, path in assets.items():
                overrides = [o.replace("{%s}" % key, str(path)) for o in overrides]
            record = {"name": name, **run_step(out, index, overrides, seconds)}
            records.append(record)
            print(f"{name} step {index}: rc {record['rc']}, {record['wall_seconds']:.1f} s", flush=True)
            (args.out / "gpu_pipeline_check.json").write_text(json.dumps(records, indent=1))
            (args.out / "gpu_pipeline_check.md").write_text(table(records))
            if record["rc"] != 0:
                print("\n".join(record["log_tail"][-25:]), flush=True)
                break  # the variant's next steps read this one's checkpoints
    print(table(records))
    sys.exit(0 if all(r["rc"] == 0 for r in records) else 1)


if __name__ == "__main__":
    main()
