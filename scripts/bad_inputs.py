"""What a user sees for bad input: every case through `python -m rto.main`, one table row each.

    python scripts/bad_inputs.py                  # this tree
    python scripts/bad_inputs.py --tree <folder>  # another checkout (e.g. `git archive <ref>` unpacked)

Writes a tiny pretrained model and preference files (good and broken) into a temporary folder, runs
each case at `debug=tiny` and prints: exit code, number of output lines, whether a Python traceback
was printed, and the message (the last lines of stderr, or the `skipped` count of a run that went on).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.real_assets import save_tiny_llama, write_preference_sets  # noqa: E402

GOOD = {"prompt": "what color is the sky ?", "chosen": "the sky is blue .", "rejected": "i think it is red maybe"}
HINT = "Set the environment variable HYDRA_FULL_ERROR=1"


def write_files(folder: Path) -> dict[str, Path]:
    """Preference files with one broken line (or byte range) each, next to the good ones."""
    paths = {k: Path(v) for k, v in write_preference_sets(folder).items()}
    rows = [json.dumps({**GOOD, "prompt": f"what color is the {t} ?"}) for t in ("sky", "sea", "ink", "milk", "ash")]
    paths["bad_line"] = folder / "bad_line.jsonl"
    paths["bad_line"].write_text("\n".join(rows[:2] + ['{"prompt": "what color is the rose ?", "chosen": '] + rows[2:]) + "\n")
    paths["bad_utf8"] = folder / "bad_utf8.jsonl"
    paths["bad_utf8"].write_bytes(("\n".join(rows[:3]) + "\n").encode() + b'{"prompt": "\xff\xfe"}\n'
                                  + ("\n".join(rows[3:]) + "\n").encode())
    paths["mixed_types"] = folder / "mixed_types.jsonl"
    paths["mixed_types"].write_text("\n".join(rows[:2] + [json.dumps({**GOOD, "chosen": 5})] + rows[2:]) + "\n")
    paths["bad_csv"] = folder / "bad.csv"
    paths["bad_csv"].write_text("prompt,chosen,rejected\n" + "".join(
        f"what color is the {t} ?,the {t} is blue .,i think it is red maybe\n" for t in ("sky", "sea"))
        + "what color is the ink ?,the ink is black .,i think,it is red\n"
        + "".join(f"what color is the {t} ?,the {t} is blue .,i think it is red maybe\n" for t in ("ash", "milk")))
    paths["bad_parquet"] = folder / "bad.parquet"
    data = Path(paths["plain"]).read_bytes()
    paths["bad_parquet"].write_bytes(data[: len(data) // 2])
    paths["bad_json"] = folder / "bad_array.json"
    paths["bad_json"].write_text("[\n" + ",\n".join(rows[:2]) + ",\n{\"prompt\": oops}\n]\n")
    paths["txt"] = folder / "prefs.txt"
    paths["txt"].write_text("\n".join(rows) + "\n")
    return paths


def cases(assets: Path, files: dict[str, Path], runs: Path) -> list[tuple[str, list[str]]]:
    real = ["model=hf", f"model.pretrained={assets / 'llama'}", "data=jsonl", "data.max_prompt_tokens=32",
            "data.max_response_tokens=12", "data.test_prompt_fraction=0.4", "data.val_prompt_fraction=0.3", "data.n_test_prompts=4", "stage=sft"]
    on = lambda key: real + [f"data.path={files[key]}"]  # noqa: E731
    sft_done = runs / "sft_done"
    return [
        ("config value out of range", ["beta=-1"]),
        ("config value of the wrong kind", ["data.on_invalid=warn"]),
        ("unknown key (Hydra)", ["no_such_key=1"]),
        ("unknown group option (Hydra)", ["reward=foo"]),
        ("embedded data.n_pairs=0", ["data.n_pairs=0"]),
        ("embedded data.n_sft=0", ["data.n_sft=0"]),
        ("embedded data.n_train_prompts=0", ["data.n_train_prompts=0"]),
        ("embedded data.n_test_prompts=0", ["data.n_test_prompts=0"]),
        ("embedded data.n_test_prompts=1 (one test prompt)", ["data.n_test_prompts=1"]),
        ("eval.n_prompts=1", ["eval.n_prompts=1"]),
        ("embedded data.n_test_prompts over its pool", ["data.n_test_prompts=100000"]),
        ("embedded data.n_pairs=-1", ["data.n_pairs=-1"]),
        ("jsonl line that is not JSON", on("bad_line")),
        ("same, data.on_invalid=skip", on("bad_line") + ["data.on_invalid=skip"]),
        ("jsonl line that is not UTF-8", on("bad_utf8")),
        ("jsonl row whose chosen is a number", on("mixed_types")),
        ("same, data.on_invalid=skip", on("mixed_types") + ["data.on_invalid=skip"]),
        ("csv line with an extra field", on("bad_csv")),
        ("same, data.on_invalid=skip", on("bad_csv") + ["data.on_invalid=skip"]),
        ("truncated parquet file", on("bad_parquet")),
        ("json array with a syntax error", on("bad_json")),
        ("data.path of another file type (.txt)", on("txt")),
        ("data.path that does not exist", real + [f"data.path={assets / 'missing.jsonl'}"]),
        ("real data without a pretrained model", ["data=jsonl", f"data.path={files['plain']}"]),
        ("model.pretrained folder that does not exist", ["model=hf", f"model.pretrained={assets / 'nope'}"]),
        ("model.pretrained folder without a model", ["model=hf", f"model.pretrained={assets}"]),
        ("model.pretrained hub id, no network", ["model=hf", "model.pretrained=HuggingFaceTB/SmolLM2-360M"]),
        ("pretrained model with the embedded data", ["model=hf", f"model.pretrained={assets / 'llama'}"]),
        ("reward_model.path that does not exist", ["reward_model=pretrained", f"reward_model.path={assets / 'nope'}"]),
        ("trainer=gpu without a GPU", ["trainer=gpu"]),
        ("stage=ppo in an empty run folder (no stage cache)", ["stage=ppo", "cache.enabled=false"]),
        ("sft.checkpoint that does not exist", [f"sft.checkpoint={assets / 'nope'}"]),
        ("eval.judge that does not exist", [f"eval.judge={assets / 'nope'}"]),
        ("corrupted sft checkpoint", ["stage=rm", f"hydra.run.dir={sft_done}"]),
        ("sweep with one job's user error", ["-m", "stage=sft", "data.n_sft=0,128"]),
    ]


def summary(proc: subprocess.CompletedProcess) -> tuple[int, bool, str]:
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    if proc.returncode == 0:
        skipped = [re.sub(r"^\[.*?\]\[.*?\]\[\w+\] - ", "", line) for line in lines if "skipp" in line]
        return len(lines), False, "; ".join(skipped) or "ok (trained)"
    err = [line for line in proc.stderr.splitlines() if line.strip() and HINT not in line]
    start = next((i for i, line in enumerate(err) if line.startswith("Error (")), max(0, len(err) - 3))
    return len(lines), "Traceback" in out, " / ".join(err[start:start + 4])[:600]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose rto runs (default: this one)")
    parser.add_argument("-k", action="append", help="only cases whose name contains this (repeatable)")
    args = parser.parse_args()
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(args.tree))
    env.pop("HYDRA_FULL_ERROR", None)
    with tempfile.TemporaryDirectory() as tmp:
        assets, runs = Path(tmp) / "assets", Path(tmp) / "runs"
        save_tiny_llama(assets / "llama")
        files = write_files(assets / "data")
        base = [sys.executable, "-m", "rto.main", "debug=tiny", f"paths.cache_dir={runs / 'cache'}"]
        # a finished SFT stage whose weights file is then cut in half
        # (not published to the cache: its files are hard links to the run folder's)
        subprocess.run(base + ["stage=sft", "cache.enabled=false", f"hydra.run.dir={runs / 'sft_done'}"],
                       cwd=args.tree, env=env, check=True, capture_output=True)
        weights = runs / "sft_done" / "checkpoints" / "sft" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        print("| input | exit | lines | traceback | message |\n|---|---|---|---|---|")
        for i, (name, overrides) in enumerate(cases(assets, files, runs)):
            if args.k and not any(k in name for k in args.k):
                continue
            key = "hydra.sweep.dir" if "-m" in overrides else "hydra.run.dir"
            run_dir = [] if any(o.startswith("hydra.run.dir") for o in overrides) else [f"{key}={runs / str(i)}"]
            flags = [o for o in overrides if o == "-m"]  # before the overrides, for Hydra's parser
            command = base[:3] + flags + base[3:] + [o for o in overrides if o != "-m"] + run_dir
            proc = subprocess.run(command, cwd=args.tree, env=env, capture_output=True, text=True)
            n, tb, message = summary(proc)
            shown = " ".join(o.replace(tmp, "<tmp>") for o in overrides)
            message = message.replace(tmp, "<tmp>").replace("|", "\\|")
            print(f"| {name}: `{shown}` | {proc.returncode} | {n} | {'yes' if tb else 'no'} | {message} |", flush=True)
        shutil.rmtree(runs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
