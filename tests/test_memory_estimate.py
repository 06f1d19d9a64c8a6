"""The memory formula of docs/MEMORY.md (`rto.models.memory`) against numbers worked by hand on a
toy shape: h=4, kv=2, f=8, V=10, 2 layers, 1000 parameters; LoRA r=1 has 2 x (2h + 2(h+kv) + 2h +
3(h+f)) = 2 x 64 = 128 parameters; a layer keeps 6h + 4kv + 4f = 64 values per token."""

from __future__ import annotations

from pathlib import Path

from rto.models.memory import PRESETS, Setting, Shape, ppo_memory

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
