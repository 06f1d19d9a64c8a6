"""Bad input through the real CLI (`python -m rto.main`, a subprocess): a short message naming the file,
line or key, exit code 1, no traceback; an internal bug keeps its traceback. Most cases stop before
training (during config checks or data loading), so each costs about the start-up of the entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real_assets import save_tiny_llama, write_preference_sets

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"prompt": "what color is the sky ?", "chosen": "the sky is blue .", "rejected": "i think it is red maybe"}
THINGS = ("sky", "sea", "ink", "milk", "ash", "rose", "snow", "coal")


def cli(tmp_path: Path, *overrides: str, env: dict | None = None, code: str | None = None,
        multirun: bool = False) -> subprocess.CompletedProcess:
    """`python -m rto.main debug=tiny ...` in the repo root, its run (or sweep) folder under tmp_path."""
    folder = [f"hydra.sweep.dir={tmp_path / 'sweep'}"] if multirun else [f"hydra.run.dir={tmp_path / 'run'}"]
    args = ["debug=tiny", *overrides, *folder, f"paths.cache_dir={tmp_path / 'cache'}"]
    command = [sys.executable, "-c", code, *args] if code else \
        [sys.executable, "-m", "rto.main", *(["-m"] if multirun else []), *args]
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                    **(env or {}))
    return subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


def assert_user_error(result: subprocess.CompletedProcess, *named: str) -> str:
    """Exit 1, no traceback anywhere in the output, and the message names each of `named`."""
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for name in named:
        assert name in result.stderr, (name, result.stderr[-3000:])
    return result.stderr


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"model": save_tiny_llama(root / "llama"), **write_preference_sets(root / "data"), "root": root}


def real_data(assets, path: Path) -> list[str]:
    """The tiny pretrained model on a preference file, SFT only."""
    return ["model=hf", f"model.pretrained={assets['model']}", "data=jsonl", f"data.path={path}",
            "data.max_prompt_tokens=32", "data.max_response_tokens=12", "data.test_prompt_fraction=0.25",
            "data.val_prompt_fraction=0.34", "data.n_test_prompts=4", "stage=sft"]


def rows(n: int = 8) -> list[str]:
    return [json.dumps({**GOOD, "prompt": f"what color is the {t} ?"}) for t in THINGS[:n]]


# ---- 1. a line that cannot be parsed --------------------------------------------------------------------
def broken_jsonl(folder: Path) -> Path:
    path = folder / "broken.jsonl"
    lines = rows()
    path.write_text("\n".join(lines[:2] + ['{"prompt": "what color is the wine ?", "chosen": '] + lines[2:]) + "\n")
    return path


def broken_csv(folder: Path) -> Path:
    path = folder / "broken.csv"
    good = [f"what color is the {t} ?,the {t} is blue .,i think it is red maybe" for t in THINGS]
    path.write_text("\n".join(["prompt,chosen,rejected"] + good[:3] + ["what color is the wine ?,red,i think,it is"]
                              + good[3:]) + "\n")
    return path


def truncated_parquet(folder: Path, assets) -> Path:
    path = folder / "truncated.parquet"
    data = Path(assets["plain"]).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind, where", [("jsonl", "line 3: not valid JSON"),
                                         ("csv", "line 5: 4 fields, but the header names 3 columns"),
                                         ("parquet", "cannot be read as Parquet")])
def test_unreadable_file_stops_with_its_file_and_line(tmp_path, assets, kind, where):
    path = {"jsonl": broken_jsonl, "csv": broken_csv}[kind](tmp_path) if kind != "parquet" \
        else truncated_parquet(tmp_path, assets)
    stderr = assert_user_error(cli(tmp_path, *real_data(assets, path)), f"{path}", where)
    if kind != "parquet":  # a line can be skipped; a file without its footer cannot
        assert "data.on_invalid=skip" in stderr


def test_unreadable_line_is_skipped_and_counted(tmp_path, assets):
    result = cli(tmp_path, *real_data(assets, broken_jsonl(tmp_path)), "data.on_invalid=skip")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 1 of 9 malformed rows (1 unreadable: line 3)" in result.stdout + result.stderr
    assert (tmp_path / "run" / "checkpoints" / "sft").is_dir()


# ---- 2. and 3. empty sets, and an evaluation on one prompt -----------------------------------------------
@pytest.mark.parametrize("override, named", [
    ("data.n_pairs=0", ["train_pairs", "data.n_pairs=0", "set data.n_pairs>=1"]),
    ("data.n_sft=0", ["sft_rows", "data.n_sft=0"]),
    ("data.n_test_prompts=1", ["test_prompts set has 1 row", "data.n_test_prompts=1", "set data.n_test_prompts>=2"]),
    ("data.n_val_prompts=0", ["val_prompts set has 0 rows", "data.n_val_prompts=0"]),
    ("eval.n_prompts=1", ["eval.n_prompts must be null or an integer >= 2", "got 1"]),
])
def test_empty_or_one_prompt_set_stops_before_training(tmp_path, override, named):
    assert_user_error(cli(tmp_path, override), *named)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def test_real_data_with_one_held_out_prompt_is_refused(tmp_path, assets):
    path = tmp_path / "four.jsonl"
    path.write_text("\n".join(rows(4)) + "\n")  # test_prompt_fraction=0.25 of 4 prompts: 1 held out
    # (and 2 of the 3 others for validation, so that set is large enough)
    assert_user_error(cli(tmp_path, *real_data(assets, path), "data.val_prompt_fraction=0.67"), "test_prompts set has 1 row",
                      "data.test_prompt_fraction=0.25", "at least 2")


# ---- 4. config values, models, checkpoints, the machine ----------------------------------------------------
@pytest.mark.parametrize("override, named", [
    ("beta=-1", ["Error (config)", "beta must be a number > 0, got -1"]),
    ("trainer=gpu", ["Error (environment)", "trainer.accelerator=gpu", "trainer=cpu"]),
    ("stage=ppo", ["Error (checkpoint)", "stage=ppo needs the sft checkpoint", "run stage=sft"]),
    ("ppo.micro_batch_size=0", ["Error (config)", "ppo.micro_batch_size must be null or an integer >= 1, got 0"]),
    ("ppo.micro_batch_size=5", ["Error (config)", "ppo.micro_batch_size (5) must not exceed ppo.minibatch_size (4)"]),
    ("trainer.precision=bf16-true", ["Error (config)", "trainer.precision must be 32-true (fp32) or bf16-mixed",
                                     "got 'bf16-true'", "model.dtype=bf16"]),
])
def test_user_error_is_one_short_message(tmp_path, override, named):
    if override == "trainer=gpu":
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    assert_user_error(cli(tmp_path, override), *named)


def test_model_that_cannot_be_found_names_its_key(tmp_path, assets):
    missing = assets["root"] / "no_model_here"
    assert_user_error(cli(tmp_path, "model=hf", f"model.pretrained={missing}"), "Error (model)",
                      f"model.pretrained={missing}: no model at")
    # a hub id on a machine without network (HF_HUB_OFFLINE=1, not in the cache): a transformers OSError before
    stderr = assert_user_error(cli(tmp_path, "model=hf", "model.pretrained=HuggingFaceTB/no-such-model-rto"),
                               "model.pretrained=HuggingFaceTB/no-such-model-rto: cannot be downloaded")
    assert "give a local folder" in stderr


def test_corrupt_checkpoint_is_named_and_finished_stages_stay(tmp_path):
    assert cli(tmp_path, "stage=sft", "cache.enabled=false").returncode == 0
    weights = tmp_path / "run" / "checkpoints" / "sft" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_user_error(cli(tmp_path, "stage=rm"), "Error (checkpoint)", f"{weights} is corrupted or truncated",
                      "delete")
    assert weights.exists() and (weights.parent / "manifest.json").exists()  # the error deleted nothing


def test_sweep_runs_every_job_and_reports_the_one_with_a_user_error(tmp_path):
    result = cli(tmp_path, "stage=sft", "data.n_sft=0,128", multirun=True)
    assert_user_error(result, "Error executing job with overrides", "data.n_sft=0", "the sft_rows set has 0 rows")
    sweep = tmp_path / "sweep"
    assert "the sft_rows set has 0 rows" in (sweep / "0" / "main.log").read_text()  # logged in the failed job
    assert (sweep / "1" / "checkpoints" / "sft" / "manifest.json").is_file()  # the next job still ran


# ---- our own bugs keep their traceback; HYDRA_FULL_ERROR=1 shows every traceback --------------------------
# the entry point run as `python -m rto.main` does, with a bug planted in the pipeline
BUG = ("import runpy, rto.pipeline\n"
       "def run(cfg):\n    raise KeyError('a bug in rto')\n"
       "rto.pipeline.run = run\nrunpy.run_module('rto.main', run_name='__main__', alter_sys=True)\n")


def test_internal_bug_keeps_its_traceback(tmp_path):
    result = cli(tmp_path, code=BUG)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "KeyError: 'a bug in rto'" in result.stderr


def test_full_error_switch_shows_the_user_errors_traceback(tmp_path):
    result = cli(tmp_path, "beta=-1", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "rto/config.py" in result.stderr
    assert "beta must be a number > 0" in result.stderr


@pytest.mark.parametrize("make, named", [(lambda p: p / "missing", "is not a folder"),
                                         (lambda p: p, "holds no finished job")])
def test_report_on_a_folder_without_runs_is_one_short_message(tmp_path, make, named):
    folder = make(tmp_path)
    result = subprocess.run([sys.executable, "-m", "rto.report", str(folder)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and named in result.stderr and str(folder) in result.stderr


def test_prompt_plus_response_over_a_models_positions_stops_before_training(assets, tmp_path):
    """The tiny Llama has 128 positions: 120 prompt tokens + 12 response tokens do not fit (with learned
    positions the first forward would die on an index error; with rotary ones it would run past the
    trained context unnoticed). A from-scratch preset's positions count the same way."""
    data = assets["root"] / "long.jsonl"
    data.write_text("\n".join(rows()) + "\n")
    overrides = [o for o in real_data(assets, data) if not o.startswith("data.max_prompt_tokens")]
    err = assert_user_error(cli(tmp_path, *overrides, "data.max_prompt_tokens=120"),
                            "data.max_prompt_tokens=120 + data.max_response_tokens=12 = 132 tokens",
                            "128 positions", "max_position_embeddings")
    assert "lower data.max_prompt_tokens" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert_user_error(cli(tmp_path / "scratch", "model.max_position_embeddings=24"),
                      "= 32 tokens, over the 24 positions of model=")
