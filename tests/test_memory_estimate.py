"""The memory formula of docs/MEMORY.md (`rto.models.memory`) against numbers worked by hand on a
toy shape: h=4, kv=2, f=8, V=10, 2 layers, 1000 parameters; LoRA r=1 has 2 x (2h + 2(h+kv) + 2h +
3(h+f)) = 2 x 64 = 128 parameters; a layer keeps 6h + 4kv + 4f = 64 values per token."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest

from rto.models.memory import (PRESETS, Setting, Shape, held_bytes, packed_frozen_bytes, ppo_memory,
                               training_stages_memory)

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
    """`cpu_prepack`'s copies: the toy's block weights are q, o 16, k, v 8, MLP 32 each; with at least 10
    values, q, o and the three MLP matrices count (128 a layer, 256 in all) and the LM head (40). Under
    32-true only fp32-stored models pack (4 bytes), under bf16-mixed every frozen one (its bf16 copy)."""
    assert TOY.linear_weights(10) == 296 and TOY.linear_weights(10, lm_head=False) == 256
    assert TOY.linear_weights(0) == 2 * 144 + 40
    assert replace(TOY, mlp_matrices=2).linear_weights(10) == 2 * 96 + 40  # a GELU MLP: two matrices
    assert replace(TOY, linear_blocks=False).linear_weights(10) == 40  # GPT-2's Conv1D blocks
    on = replace(LORA, cpu_prepack=True, prepack_min_elements=10)
    parts = ppo_memory(TOY, TOY, on)  # the policy stored in bf16 runs plain under 32-true
    assert parts["packed frozen weights"] == 256 * 4 and parts["total"] == 11120 + 1024 + 8160
    assert packed_frozen_bytes(TOY, TOY, replace(on, bf16_mixed=True)) == 296 * 2 + 256 * 2
    fp32 = replace(on, weight_bytes=4)
    assert packed_frozen_bytes(TOY, TOY, fp32) == 296 * 4 + 256 * 4  # the shared base once; the critic reads the RM's
    assert packed_frozen_bytes(TOY, TOY, replace(fp32, shared=False)) == 3 * 296 * 4 + 2 * 256 * 4  # + the critic's own
    full = replace(fp32, lora_r=0, critic_lora_r=0)
    assert packed_frozen_bytes(TOY, TOY, full) == 2 * 296 * 4 + 256 * 4  # reference, DPO model; actor, critic train
    assert packed_frozen_bytes(TOY, TOY, replace(full, token_reward=False)) == 296 * 4 + 256 * 4  # no DPO model
    small_rm = replace(TOY, layers=1)
    assert packed_frozen_bytes(TOY, small_rm, fp32) == 296 * 4 + 128 * 4
    assert "packed frozen weights" not in ppo_memory(TOY, TOY, LORA)


def test_training_stages_by_hand():
    """SFT, RM and DPO at 2 rows / pairs of 3 + 2 tokens: LoRA adapters and their gradients and moments
    are 4 x 128 + 12 x 128 = 2048 bytes; a layer keeps 64 values per token (2 layers: 128); a pair batch
    runs 2 prompts once and 4 responses, 14 tokens, or 4 x 5 = 20 with checkpointing (no sharing)."""
    stages = training_stages_memory(TOY, TOY, LORA, batch=2)
    assert stages["sft"] == 2000 + 2048 + 3 * 4 * 2 * 2 * 10 + 10 * 128 * 2 == 7088
    assert stages["rm"] == 4000 + 2048 + 14 * 128 * 4 == 13216  # the RM (fp32) and its LoRA; the SFT policy is off it
    # the policy's base and its adapter with grads + AdamW; the reference log-probs precomputed (the
    # default), so no reference on the device
    assert stages["dpo"] == 2000 + 2048 + 3 * 4 * 4 * 2 * 10 + 14 * 128 * 2 == 8592
    # a step reads the reference (dpo.precompute_ref=false): its adapter on the policy's (shared) base too
    per_step = replace(LORA, dpo_precompute_ref=False)
    assert training_stages_memory(TOY, TOY, per_step, batch=2)["dpo"] == 8592 + 512 == 9104
    checkpointed = training_stages_memory(TOY, TOY, replace(per_step, checkpointing=True), batch=2)
    assert checkpointed["dpo"] == 2000 + 512 + 2048 + 960 + 20 * (2 * 4 + 64) * 2
    full = training_stages_memory(TOY, TOY, replace(per_step, lora_r=0, critic_lora_r=0, gguf=True), batch=2)
    assert full["sft"] == 2000 + 3 * 2000 + 2000 + 480 + 2560  # weights, grads + AdamW, the cached file
    assert full["dpo"] == 2000 + 2000 + 3 * 2000 + 2000 + 960 + 3584  # reference, policy, its grads + AdamW, file
    full_precomputed = replace(LORA, lora_r=0, critic_lora_r=0, gguf=True)
    assert training_stages_memory(TOY, TOY, full_precomputed, batch=2)["dpo"] == full["dpo"] - 2000  # no copy
    assert full["rm"] == 4000 + 3 * 4000 + 7168
    assert training_stages_memory(TOY, TOY, replace(per_step, shared=False), batch=2)["dpo"] == 9104 + 2000
    # a reward model of another shape (1 layer: 64 LoRA parameters, 64 values per token)
    assert training_stages_memory(TOY, replace(TOY, layers=1), LORA, batch=2)["rm"] == 4000 + 16 * 64 + 14 * 64 * 4
    assert training_stages_memory(TOY, TOY, replace(LORA, gguf=True), batch=2)["sft"] == 7088  # the base is the file's


def shape_of(folder: Path) -> Shape:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(folder)
    return Shape(params=0, layers=c.num_hidden_layers, hidden=c.hidden_size, kv=c.num_key_value_heads * c.head_dim,
                 ffn=c.intermediate_size, vocab=c.vocab_size)


LORA_OVERRIDE = "{r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}"


@pytest.mark.parametrize("case", ["lora", "full", "full_sentence", "rm_pretrained_lora"])
def test_packed_frozen_weights_match_what_a_ppo_stage_packs(tmp_path, monkeypatch, case):
    """The formula's packed copies against a real run: the PPO stage of SFT -> RM -> DPO -> PPO on tiny
    Llamas packs exactly the weights `packed_frozen_bytes` counts. The policy (h=32, 2 layers) has 16-wide
    keys and values (512 values: under the threshold of 1000, as SmolLM2's are under the default) and an
    untied LM head; the separate reward model (`rm_pretrained_lora`) has another shape (h=48, 3 layers)."""
    from rto import context
    from rto.main import train
    from rto.models import prepacked
    from tests.conftest import compose_config
    from tests.real_assets import save_tiny_llama, write_preference_sets

    if not prepacked.available():
        pytest.skip("this torch has no oneDNN packed linear")
    policy = save_tiny_llama(tmp_path / "policy", num_key_value_heads=1, tie_word_embeddings=False)
    data = write_preference_sets(tmp_path / "data")["plain"]
    real = context.cpu_prepacked_linears
    stages = {}

    @contextlib.contextmanager
    def spy(models, trainable=False, **kwargs):
        with real(models, trainable=trainable, **kwargs) as n:
            # this block's packs only: the distinct packs behind the layers of the models it was given
            packs = {id(p): p for model in models if model is not None for m in model.modules()
                     if (p := prepacked._PACKS.get(m))}
            stages[type(models[0]).__name__] = sum(p.weight.numel() for p in packs.values())
            yield n
    monkeypatch.setattr(context, "cpu_prepacked_linears", spy)
    min_elements = 1000
    lora = case in ("lora", "rm_pretrained_lora")
    overrides = [f"model.lora={LORA_OVERRIDE}" if lora else "model.lora=null",
                 "reward=sentence" if case == "full_sentence" else "reward=token"]
    rm_shape = shape_of(policy)
    if case == "rm_pretrained_lora":
        rm = save_tiny_llama(tmp_path / "rm", hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
                             num_key_value_heads=1, intermediate_size=96, tie_word_embeddings=False)
        overrides += ["reward_model=pretrained", f"reward_model.path={rm}", f"reward_model.lora={LORA_OVERRIDE}"]
        rm_shape = shape_of(rm)
    train(compose_config("model=hf", f"model.pretrained={policy}", "data=jsonl", f"data.path={data}",
                         "data.sft_path=null", "data.test_split=null", "data.max_prompt_tokens=32",
                         "data.max_response_tokens=8", "data.n_test_prompts=4", "data.test_prompt_fraction=0.2",
                         "data.val_prompt_fraction=0.1", "data.val_fraction=0.2", *overrides,
                         "cpu_prepack.enabled=true", f"cpu_prepack.min_weight_elements={min_elements}",
                         output_dir=tmp_path / "run"))
    setting = Setting(lora_r=4 if lora else 0, critic_lora_r=4 if lora else 0, token_reward=case != "full_sentence",
                      cpu_prepack=True, prepack_min_elements=min_elements)
    assert stages["PPOModule"] > 0
    assert stages["PPOModule"] * 4 == packed_frozen_bytes(shape_of(policy), rm_shape, setting)


def doc_table_rows(header_start: str) -> dict[str, list[str]]:
    """The rows of docs/MEMORY.md's table whose header begins with `header_start`, by preset: their cells."""
    lines = (Path(__file__).resolve().parents[1] / "docs" / "MEMORY.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_docs_preset_tables_are_the_formulas():
    """docs/MEMORY.md's PPO and earlier-stage tables print what `rto.models.memory` computes today (a
    change of the formula or of a preset's shape fails here until the docs are updated)."""
    def gb(value: float) -> float:
        return round(value / 1e9, 1)

    ppo_rows = doc_table_rows("| preset | held | sampling KV cache |")
    stage_rows = doc_table_rows("| preset | SFT, batch 64 / micro-batches of 8 |")
    assert set(ppo_rows) == set(stage_rows) == set(PRESETS)
    for name, (policy, rm, setting) in PRESETS.items():
        rm = rm or policy
        whole, micro = ppo_memory(policy, rm, setting), ppo_memory(policy, rm, replace(setting, micro=4))
        packed = [gb(packed_frozen_bytes(policy, rm, replace(setting, bf16_mixed=b16))) for b16 in (False, True)]
        expected = [gb(held_bytes(whole)), gb(whole["sampling KV cache"]),
                    f"{gb(whole['experience logits'])} ({gb(micro['experience logits'])})",
                    f"{gb(whole['update activations'])} ({gb(micro['update activations'])})",
                    gb(whole["total"]), gb(micro["total"]), packed]
        cells = ppo_rows[name]
        shown = [float(cells[0]), float(cells[1]), cells[2], cells[3], float(cells[4]), float(cells[5]),
                 [float(v) for v in cells[6].split(" / ")]]
        assert shown == expected, name
        stages = [training_stages_memory(policy, rm, setting, batch) for batch in (64, 8)]
        assert stage_rows[name] == [f"{gb(stages[0][k])} / {gb(stages[1][k])}" for k in ("sft", "rm", "dpo")], name
