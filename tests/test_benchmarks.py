"""Our side of `benchmarks/vs_trl.py` runs: the worker builds the real modules from `conf/` at the
benchmark's shapes and reports step times through the pause-and-time protocol. (TRL's side needs
its own virtualenv and is not run here; the parity script runs where that virtualenv exists.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
from shapes import write_fixtures  # noqa: E402
from step_clock import TIMES_PREFIX  # noqa: E402


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    spec = {**write_fixtures(folder / "fixtures", n_prompts=64), "threads": 1, "seed": 0, "total_steps": 3}
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


# ppo_token: in process, under bf16-mixed, below (`test_our_worker_trains_on_the_path_a_run_takes`)
@pytest.mark.parametrize("work, overrides", [("dpo", ["dpo.precompute_ref=false"]),
                                             ("grpo", []), ("rl", ["algo=reinforce_pp", "reward=token"])])
def test_our_benchmark_worker_times_real_steps(spec_path, work, overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(BENCH / "ours_worker.py"), work, str(spec_path), *overrides],
                         input="run 2\nstop\n", capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(TIMES_PREFIX)]
    assert lines, out.stdout[-2000:] + out.stderr[-3000:]
    times = json.loads(lines[0][len(TIMES_PREFIX):])
    assert len(times) == 2 and all(t > 0 for t in times)


@pytest.mark.skipif(not (BENCH / ".venv-trl" / "bin" / "python").exists(),
                    reason="TRL's virtualenv is absent (`python benchmarks/vs_trl.py --quick` creates it)")
def test_trl_parity_script_finds_our_ppo_numbers_equal_to_trls(tmp_path):
    """`benchmarks/trl_parity.py`: GAE advantages, returns, policy and value losses against TRL 0.23.1's
    own code on one fixed batch (needs TRL's virtualenv, which this suite does not create)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(BENCH / "trl_parity.py"), "--out", str(tmp_path / "parity.md")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "parity.json").read_text())
    checked = [r for r in results if r["ok"] is not None]
    assert checked and all(r["ok"] for r in checked)
    assert any(r["rows_ending_early"] for r in checked) and all(r["clipfrac"] > 0 for r in checked)


# ---- vs_trl.py --only ppo_smollm2, at a tiny size: a small Llama with a chat template stands in for the GGUF model
def trl_venv_ready() -> bool:
    python = BENCH / ".venv-trl" / "bin" / "python"
    return python.exists() and subprocess.run([str(python), "-c", "import trl, peft, gguf"]).returncode == 0


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory) -> Path:
    from tests.real_assets import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny_chat") / "model")


SMALL = ["--smollm2-prompts", "4", "--smollm2-new-tokens", "6", "--smollm2-epochs", "1", "--smollm2-minibatch", "2"]


def test_smollm2_spec_gives_both_sides_the_same_prompt_ids_and_trl_a_pad_no_prompt_holds(tiny_chat_model, tmp_path):
    from smollm2_spec import write_smollm2_spec

    spec = write_smollm2_spec(tmp_path, threads=1, seed=0, total_steps=3, shapes={"rollout_batch_size": 4},
                              overrides=("model=hf", f"model.pretrained={tiny_chat_model}"))
    ids = json.loads(Path(spec["prompt_ids"]).read_text())
    assert len(ids) == 4 == len(json.loads(Path(spec["prompts"]).read_text()))
    assert spec["lora"] == {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert spec["max_new_tokens"] == 32 and spec["ppo_epochs"] == 2 and spec["minibatch_size"] == 8
    # the tiny tokenizer has no pad: ours pads with EOS, which TRL could not tell from a real token
    assert spec["trl_pad_id"] not in {i for row in ids for i in row}
    assert spec["prompt_tokens"] == max(len(row) for row in ids)


def test_trl_pad_is_a_token_no_prompt_holds(tiny_chat_model):
    from smollm2_spec import trl_pad_id
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    specials = [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, 0, 1, 2, 3, 4]
    assert trl_pad_id(tok, [specials[:4], specials[4:]]) not in specials
    assert trl_pad_id(tok, [[5, 6]]) == 0  # no <|endoftext|> here: the first id no prompt holds


@pytest.mark.slow  # a benchmark script's smoke run: kept out of the default suite's 15 minutes
def test_our_smollm2_worker_times_real_steps(tiny_chat_model, tmp_path):
    from smollm2_spec import write_smollm2_spec

    spec = write_smollm2_spec(tmp_path, threads=1, seed=0, total_steps=3,
                              shapes={"rollout_batch_size": 4, "max_new_tokens": 6, "ppo_epochs": 1, "minibatch_size": 2},
                              overrides=("model=hf", f"model.pretrained={tiny_chat_model}"))
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(BENCH / "ours_worker.py"), "ppo_smollm2", str(path)],
                         input="run 2\nstop\n", capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(TIMES_PREFIX)]
    assert lines and len(json.loads(lines[0][len(TIMES_PREFIX):])) == 2


@pytest.mark.skipif(not trl_venv_ready(), reason="TRL's virtualenv with peft and gguf is absent "
                    "(`python benchmarks/vs_trl.py --quick --only ppo_smollm2` creates it)")
@pytest.mark.parametrize("precision", [[], ["--trl-bf16", "--trl-autocast", "--ours", "trainer.precision=bf16-mixed"]],
                         ids=["fp32", "bf16"])
def test_vs_trl_runs_trl_ppo_with_lora_against_ours(tiny_chat_model, tmp_path, precision):
    """Both workers of `ppo_smollm2` end to end (TRL 0.23.1's PPOTrainer with peft; its rollout checked
    to run the full `response_length`), through the driver, which writes the table; in fp32 and with
    both sides in bf16 (the table's setting line says so)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(BENCH / "vs_trl.py"), "--quick", "--only", "ppo_smollm2", "--threads", "1",
                          *SMALL, "--smollm2-overrides", "model=hf", f"model.pretrained={tiny_chat_model}",
                          "--json", str(tmp_path / "vs.json"), *precision],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "not a comparison at equal precision" not in out.stderr
    result = json.loads((tmp_path / "vs.json").read_text())["results"][0]
    assert result["work"] == "ppo_smollm2" and result["speedup"] > 0
    assert len(result["times"]["ours"]) == len(result["times"]["trl"]) == 3
    assert "LoRA r=8 alpha=16" in result["setting"] and "4 responses x 6 new tokens" in result["setting"]
    bf16_notes = ["ours: trainer.precision=bf16-mixed", "TRL: bf16=True", "TRL: the whole iteration under torch.autocast"]
    assert all((note in result["setting"]) == bool(precision) for note in bf16_notes)
    assert "ppo_smollm2" in (tmp_path / "vs.md").read_text()


def test_token_draw_benchmark_times_both_draws_at_every_shape(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "token_draw.py"), "--repeats", "2", "--threads", "1",
                          "--json", str(tmp_path / "draw.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "draw.json").read_text())["results"]
    assert [(r["rows"], r["vocabulary"]) for r in rows] == [(64, 260), (16, 49152), (64, 50257)]
    assert all(r["multinomial_ms"] > 0 and r["draw_tokens_ms"] > 0 for r in rows)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_prepack_check_times_every_smollm2_shape_both_ways(dtype):
    import torch

    from rto.models import prepacked
    if not prepacked.available(torch.bfloat16 if dtype == "bf16" else torch.float32):
        pytest.skip(f"this CPU or torch does not run oneDNN's packed linear in {dtype}")
    out = subprocess.run([sys.executable, str(BENCH / "prepack_check.py"), "--threads", "1", "--rows", "2",
                          "--repeats", "1", "--dtype", dtype], capture_output=True, text=True, timeout=300,
                         cwd=BENCH.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.stdout.splitlines()
            if line.startswith("| 2 |")]
    assert [r[1].split(" ")[0] for r in rows] == ["q_proj", "k_proj", "gate_proj", "down_proj", "lm_head", "one"]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)
    assert all(r[6] in ("yes", "no") for r in rows[:-1])  # are the two outputs identical


class _Stopped(BaseException):
    """The step clock's `os._exit` on `stop`, turned into an exception so the test process lives on."""


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_our_worker_trains_on_the_path_a_run_takes(spec_path, monkeypatch, capsys, precision):
    """The worker trains as a run's stages do (`rto.context.stage_speedups`): under bf16-mixed on a CPU
    the frozen reference's linear weights are bf16 during its training steps (the worker once left them
    fp32, so the bf16 pair against TRL timed casts a run does not make), and its frozen linear layers
    run on packed weights (`cpu_prepack`: in bf16 the bf16 copies); and it reports the steps' times (PPO with the token
    reward, in process: the driver's protocol on stdin and stdout)."""
    import io

    import torch

    monkeypatch.setattr(sys, "path", list(sys.path))  # the worker puts its folders first: undone after
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the worker's 1 thread would outlive the test
    # the worker's seed_everything sets PL_GLOBAL_SEED: setenv records its state now, to put it back after
    monkeypatch.setenv("PL_GLOBAL_SEED", os.environ.get("PL_GLOBAL_SEED", "0"))
    import ours_worker
    import step_clock

    from rto.models import prepacked

    seen = []

    class RecordingTick(ours_worker.Tick):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(({p.dtype for n, p in pl_module.reference.named_parameters() if n.endswith("c_attn.weight")},
                         type(pl_module.reference.lm_head).__name__))

    def stop(code):
        raise _Stopped(code)

    monkeypatch.setattr(ours_worker, "Tick", RecordingTick)
    monkeypatch.setattr(step_clock.os, "_exit", stop)
    monkeypatch.setattr(sys, "argv", ["ours_worker.py", "ppo_token", str(spec_path), f"trainer.precision={precision}",
                                      "cpu_prepack.min_weight_elements=0"])  # the tiny model's LM head packed too
    monkeypatch.setattr(sys, "stdin", io.StringIO("run 2\nstop\n"))
    with pytest.raises(_Stopped) as stopped:
        ours_worker.main()
    assert stopped.value.args == (0,)  # the clean exit on `stop`
    if precision == "bf16-mixed":
        packs = prepacked.available(torch.bfloat16)  # this CPU runs oneDNN in bf16
        assert seen == [({torch.bfloat16}, "PackedLinear" if packs else "Linear")] * 2
    else:
        assert seen == [({torch.float32}, "PackedLinear")] * 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(TIMES_PREFIX)]
    times = json.loads(lines[0][len(TIMES_PREFIX):])
    assert len(times) == 2 and all(t > 0 for t in times)


def test_first_minibatch_ratio_answers_help_and_refuses_a_bad_override_without_a_traceback():
    """Its arguments are Hydra overrides: `--help` once went to Hydra as one (a traceback)."""
    run = [sys.executable, str(BENCH / "first_minibatch_ratio.py")]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=300, cwd=BENCH.parent)
    assert helped.returncode == 0 and "first PPO minibatch's ratio" in helped.stdout
    bad = subprocess.run([*run, "nonsense=1"], capture_output=True, text=True, timeout=300, cwd=BENCH.parent)
    assert bad.returncode == 1 and "Could not override 'nonsense'" in bad.stderr and "Traceback" not in bad.stderr
