"""The memory formula of docs/MEMORY.md (`rto.models.memory`) against numbers worked by hand on a
toy shape: h=4, kv=2, f=8, V=10, 2 layers, 1000 parameters; LoRA r=1 has 2 x (2h + 2(h+kv) + 2h +
3(h+f)) = 2 x 64 = 128 parameters; a layer keeps 6h + 4kv + 4f = 64 values per token."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from rto.models.memory import PRESETS, Setting, Shape, packed_frozen_bytes, ppo_memory

TOY = Shape(params=1000, layers=2, hidden=4, kv=2, ffn=8, vocab=10)
LORA = Setting(weight_bytes=2, rm_bytes=4, critic_bytes=4, lora_r=1, critic_lora_r=1, token_reward=True,
               rollout=4, minibatch=2, prompt_tokens=3, response_tokens=2)


def test_lora_run_with_shared_bases_by_hand():
    parts = ppo_memory(TOY, TOY, LORA)
    assert TOY.lora_params(1) == 128
    assert parts["policy weights"] == 1000 * 2            # one base for actor, reference and DPO model
    assert parts["policy adapters"] == 4 * 128 * 3         # three fp32 adapters
    assert parts["actor grads + AdamW"] == 3 * 4 * 128
    assert parts["reward model"] == 4000
    assert parts["critic"] == 4 * 128                     # its frozen backbone is the reward model's
    assert parts["critic grads + AdamW"] == 3 * 4 * 128
    assert parts["sampling KV cache"] == 4 * 5 * 2 * 2 * 2 * 2   # rows x tokens x layers x (k, v) x kv x bytes
    assert parts["experience logits"] == 2 * 4 * 4 * 2 * 10     # logits + log-softmax, fp32, whole rollout
    # minibatch of 2 rows x 5 tokens: 3 fp32 copies of the response logits, then 10 tokens x 2 layers x 64
    # values for the actor (2 bytes) and the critic (4 bytes)
    assert parts["update activations"] == 2 * 2 * 3 * 4 * 10 + 1280 * 2 + 1280 * 4 == 8160
    assert parts["total"] == 11120 + 8160


def test_micro_batches_unshared_copies_and_checkpointing_by_hand():
    from dataclasses import replace

    micro = ppo_memory(TOY, TOY, replace(LORA, micro=1))
    assert micro["experience logits"] == 2 * 4 * 1 * 2 * 10
    assert micro["update activations"] == 1 * 2 * 3 * 4 * 10 + 640 * 2 + 640 * 4 == 4080
    assert micro["total"] == 11120 + 4080
    copies = ppo_memory(TOY, TOY, replace(LORA, shared=False))
    assert copies["policy weights"] == 3 * 2000 and copies["critic"] == 4000 + 512
    assert copies["total"] == 11120 + 4000 + 4000 + 8160
    # checkpointing keeps each layer's input (h) and one layer recomputed: 10 x (2 x 4 + 64) = 720 values
    checkpointed = ppo_memory(TOY, TOY, replace(LORA, checkpointing=True, critic_checkpointing=True))
    assert checkpointed["update activations"] == 240 * 2 + 720 * 2 + 720 * 4
    policy_only = ppo_memory(TOY, TOY, replace(LORA, checkpointing=True))  # the critic keeps every layer's values
    assert policy_only["update activations"] == 240 * 2 + 720 * 2 + 1280 * 4
    full = ppo_memory(TOY, TOY, replace(LORA, lora_r=0, critic_lora_r=0, token_reward=False, gguf=True))
    assert full["policy weights"] == 2 * 2000 and full["actor grads + AdamW"] == 3 * 2000
    assert full["cached GGUF weights"] == 2000 and full["critic grads + AdamW"] == 3 * 4000


def test_every_pretrained_preset_has_an_estimate():
    model_conf = Path(__file__).resolve().parents[1] / "conf" / "model"
    assert {p.stem for p in model_conf.glob("*.yaml") if "  - hf\n" in p.read_text()} == set(PRESETS)


def test_packed_frozen_weights_by_hand():
    """`cpu_prepack`'s copies: the toy's block weights are q, o 16, k, v 8, MLP 32 x 3; with at least 10
    values each, q, o and the MLP count (128 a layer, 256 in all) and the LM head (40)."""
    from dataclasses import replace

    assert TOY.linear_weights(10) == 296 and TOY.linear_weights(10, lm_head=False) == 256
    assert TOY.linear_weights(0) == 2 * 144 + 40
    packed = ppo_memory(TOY, TOY, replace(LORA, cpu_prepack=True, prepack_min_elements=10))
    assert packed["packed frozen weights"] == 296 * 2 + 256 * 4  # the shared base once; the RM, the critic reading it
    assert packed["total"] == 11120 + 1616 + 8160
    copies = ppo_memory(TOY, TOY, replace(LORA, cpu_prepack=True, prepack_min_elements=10, shared=False))
    assert copies["packed frozen weights"] == 3 * 296 * 2 + 256 * 4 + 256 * 4  # three bases; the critic's own
    full = ppo_memory(TOY, TOY, replace(LORA, lora_r=0, critic_lora_r=0, cpu_prepack=True, prepack_min_elements=10))
    assert full["packed frozen weights"] == 2 * 296 * 2 + 256 * 4  # reference and DPO model; actor, critic train
    assert "packed frozen weights" not in ppo_memory(TOY, TOY, LORA)
    conv1d = replace(TOY, linear_blocks=False)
    assert conv1d.linear_weights(10) == 40


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_packed_frozen_weights_match_what_a_ppo_stage_packs(tmp_path, monkeypatch, lora):
    """The formula's packed copies against a real run: the PPO stage of SFT -> RM -> DPO -> PPO on a tiny
    Llama (reward=token, reward_model=same) packs exactly the weights `packed_frozen_bytes` counts."""
    from rto import context
    from rto.main import train
    from rto.models import prepacked
    from rto.models.factory import load_policy
    from tests.conftest import compose_config
    from tests.real_assets import save_tiny_llama, write_preference_sets

    if not prepacked.available():
        pytest.skip("this torch has no oneDNN packed linear")
    model = save_tiny_llama(tmp_path / "llama")
    data = write_preference_sets(tmp_path / "data")["plain"]
    real = context.cpu_prepacked_linears
    stages = {}

    @contextlib.contextmanager
    def spy(models, trainable=False, **kwargs):
        with real(models, trainable=trainable, **kwargs) as n:
            if not trainable:  # a stage's own block (the off-step work packs everything, within it)
                packs = {id(p): p for p in prepacked._PACKS.values()}
                stages[type(models[0]).__name__] = sum(p.weight.numel() for p in packs.values())
            yield n
    monkeypatch.setattr(context, "cpu_prepacked_linears", spy)
    min_elements = 512  # every block weight of the tiny Llama (1024 or 2048 values), not the scalar head (32)
    lora_override = "model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}" if lora else "model.lora=null"
    train(compose_config("model=hf", f"model.pretrained={model}", "data=jsonl", f"data.path={data}",
                         "data.sft_path=null", "data.test_split=null", "data.max_prompt_tokens=32",
                         "data.max_response_tokens=8", "data.n_test_prompts=4", "data.test_prompt_fraction=0.2",
                         "data.val_prompt_fraction=0.1", "data.val_fraction=0.2", "reward=token",
                         "reward_model=same", lora_override, "cpu_prepack.enabled=true",
                         f"cpu_prepack.min_weight_elements={min_elements}", output_dir=tmp_path / "run"))
    config = load_policy(model, compose_config("model=hf", f"model.pretrained={model}", output_dir=tmp_path).model).config
    shape = Shape(params=0, layers=config.num_hidden_layers, hidden=config.hidden_size,
                  kv=config.num_key_value_heads * config.head_dim, ffn=config.intermediate_size,
                  vocab=config.vocab_size)
    setting = Setting(lora_r=4 if lora else 0, critic_lora_r=4 if lora else 0, token_reward=True,
                      cpu_prepack=True, prepack_min_elements=min_elements)
    assert stages["PPOModule"] > 0
    assert stages["PPOModule"] * 4 == packed_frozen_bytes(shape, shape, setting)
