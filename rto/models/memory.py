"""How much memory the PPO stage needs, and the stages before it (`training_stages_memory`): the
formula of docs/MEMORY.md.

    python -m rto.models.memory            # the estimate for every pretrained preset (docs/MEMORY.md's table)

Bytes of one process (one device; DDP holds all of it on every device, FSDP shards weights, grads
and AdamW states). Three parts add up:

- **held**: the models' weights (the policy's base once when LoRA bases are shared, else actor +
  reference + DPO model; LoRA adapters in fp32, as peft keeps them), the reward model, the critic
  (sharing the reward model's weights when it is a LoRA critic on a same-dtype reward model), and
  the trained parameters' gradient and two AdamW moments (in the parameters' dtype);
- **the largest transient** of the three phases, which never overlap: sampling's KV cache (every
  rollout row, prompt + response, keys and values of every layer); the experience's frozen forwards
  (one model's fp32 logits over the response and their log-softmax, for a micro-batch or the whole
  rollout); the update's activations for one micro-batch (or minibatch) of the actor and the critic
  (per token and layer about `6 h + 4 kv + 4 f` values kept for the backward, or only the layer's
  input `h` under gradient checkpointing plus one layer recomputed), plus the fp32 logits, their
  log-softmax and softmax (`3 x 4 V` bytes per response token).

On a CPU with `cpu_prepack` (`Setting.cpu_prepack`), **held** also counts the oneDNN-packed copy of
every frozen linear weight of at least `cpu_prepack.min_weight_elements` values, in the dtype the layers
compute in (`packed_frozen_bytes`): the policy's frozen weights (the shared LoRA base with its LM head
once, or the reference's and the DPO model's without LoRA) and the reward model's blocks (a LoRA
critic's backbone is the same weights, one copy).

An estimate: allocator slack, CUDA context (~0.5-1 GB) and framework buffers come on top.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

GB = 1e9


@dataclass(frozen=True)
class Shape:
    """A decoder's size: parameters, layers, hidden width h, key/value width kv (kv heads x head
    dim), MLP width f (SwiGLU: gate, up and down of that width), vocabulary V."""
    params: float
    layers: int
    hidden: int
    kv: int
    ffn: int
    vocab: int
    linear_blocks: bool = True  # False: GPT-2's blocks are `Conv1D` layers, which `cpu_prepack` leaves as they are
    mlp_matrices: int = 3  # SwiGLU's gate, up, down; 2 for a GELU MLP (Pythia), in `linear_weights`

    def lora_params(self, r: int) -> float:
        """LoRA of rank r on every linear layer of a block (q, k, v, o, gate, up, down)."""
        h, kv, f = self.hidden, self.kv, self.ffn
        return r * self.layers * (2 * h + 2 * (h + kv) + 2 * h + 3 * (h + f))

    def linear_weights(self, min_elements: int = 0, lm_head: bool = True) -> float:
        """Weights of the linear layers (q, k, v, o, gate, up, down in every block; the LM head with
        `lm_head`) that hold at least `min_elements` values each."""
        h, kv, f = self.hidden, self.kv, self.ffn
        block = [h * h, h * kv, h * kv, h * h] + [h * f] * self.mlp_matrices
        total = self.layers * sum(n for n in block if n >= min_elements) if self.linear_blocks else 0
        return total + (self.vocab * h if lm_head and self.vocab * h >= min_elements else 0)

    def activation_values(self, tokens: float, checkpointing: bool) -> float:
        """Values kept for the backward over `tokens` tokens (the logits aside)."""
        per_layer = 6 * self.hidden + 4 * self.kv + 4 * self.ffn
        if checkpointing:
            return tokens * (self.layers * self.hidden + per_layer)
        return tokens * self.layers * per_layer


@dataclass(frozen=True)
class Setting:
    """What a run holds: bytes per weight of the policy / reward model / critic, LoRA ranks (0: full
    fine-tuning), the RL shapes (`ppo.*`, `data.max_*_tokens`) and options."""
    weight_bytes: int = 4
    rm_bytes: int = 4
    critic_bytes: int = 4
    lora_r: int = 0
    critic_lora_r: int = 0
    token_reward: bool = True
    shared: bool = True
    rollout: int = 64
    minibatch: int = 32
    micro: Optional[int] = None
    prompt_tokens: int = 512
    response_tokens: int = 256
    checkpointing: bool = False
    critic_checkpointing: bool = False  # reward_model=same: model.gradient_checkpointing; else reward_model's
    gguf: bool = False  # the file's dequantised weights stay cached for later loads (a full copy unless shared)
    cpu_prepack: bool = False  # a CPU process with `cpu_prepack.enabled`: packed copies of the frozen linear weights
    prepack_min_elements: int = 2 ** 18  # `cpu_prepack.min_weight_elements`
    bf16_mixed: bool = False  # `trainer.precision=bf16-mixed` (only the packs' term reads it so far)
    dpo_precompute_ref: bool = True  # `dpo.precompute_ref`: DPO's module holds no reference (none on its device)


def ppo_memory(policy: Shape, rm: Shape, s: Setting) -> dict[str, float]:
    """The estimate's parts in bytes, and `total` = held + the largest transient."""
    lora, critic_lora = policy.lora_params(s.lora_r), rm.lora_params(s.critic_lora_r)
    policies = 2 + s.token_reward  # actor, reference, DPO model
    out = {}
    if s.lora_r:
        out["policy weights"] = policy.params * s.weight_bytes * (1 if s.shared else policies)
        out["policy adapters"] = 4 * lora * policies
        out["actor grads + AdamW"] = 3 * 4 * lora
    else:
        out["policy weights"] = policy.params * s.weight_bytes * policies
        out["actor grads + AdamW"] = 3 * policy.params * s.weight_bytes
    cache = cached_gguf_bytes(policy, s)
    if cache:
        out["cached GGUF weights"] = cache
    out["reward model"] = rm.params * s.rm_bytes
    if s.critic_lora_r:
        shares = s.shared and s.critic_bytes == s.rm_bytes
        out["critic"] = (0 if shares else rm.params * s.critic_bytes) + 4 * critic_lora
        out["critic grads + AdamW"] = 3 * 4 * critic_lora
    else:
        out["critic"] = rm.params * s.critic_bytes
        out["critic grads + AdamW"] = 3 * rm.params * s.critic_bytes
    if s.cpu_prepack:
        out["packed frozen weights"] = packed_frozen_bytes(policy, rm, s)
    held = sum(out.values())
    rows = s.micro or s.minibatch
    tokens = s.prompt_tokens + s.response_tokens
    out["sampling KV cache"] = s.rollout * tokens * policy.layers * 2 * policy.kv * s.weight_bytes
    out["experience logits"] = 2 * 4 * (s.micro or s.rollout) * s.response_tokens * max(policy.vocab, rm.vocab)
    out["update activations"] = (
        rows * s.response_tokens * 3 * 4 * policy.vocab
        + policy.activation_values(rows * tokens, s.checkpointing) * s.weight_bytes
        + rm.activation_values(rows * tokens, s.critic_checkpointing) * s.critic_bytes)
    out["total"] = held + max(out["sampling KV cache"], out["experience logits"], out["update activations"])
    return out


def held_bytes(parts: dict[str, float]) -> float:
    """What `ppo_memory`'s run holds throughout: its total less the largest of the phases' transients."""
    return parts["total"] - max(parts["sampling KV cache"], parts["experience logits"], parts["update activations"])


def cached_gguf_bytes(policy: Shape, s: Setting) -> float:
    """The GGUF file's dequantised weights, kept for later loads: a copy of the policy's, unless they are
    the shared LoRA base itself."""
    return policy.params * s.weight_bytes if s.gguf and not (s.lora_r and s.shared) else 0.0


def packed_frozen_bytes(policy: Shape, rm: Shape, s: Setting) -> float:
    """`cpu_prepack`'s copies during the PPO stage, one per distinct frozen weight, in the dtype the
    layers compute in: under `32-true` only fp32 weights pack (a model stored in bf16 runs plain), under
    `bf16-mixed` the bf16 copies of every frozen layer. The policy's frozen weights (LoRA: the shared base
    and its LM head once; else the reference and, with the token reward, the DPO model, each its own; the
    actor trains and is not packed; unshared LoRA bases, under FSDP only, where nothing packs: one per
    policy), and the reward model's blocks (its scalar head is a subclass of `nn.Linear`, left as it is;
    a LoRA critic reads the same weights, a fully trained critic is not packed)."""
    pack_bytes = 2 if s.bf16_mixed else 4

    def packed(stored_bytes: int) -> int:  # bytes per packed value of a model stored at `stored_bytes`
        return pack_bytes if s.bf16_mixed or stored_bytes == 4 else 0
    policy_weights = policy.linear_weights(s.prepack_min_elements)
    frozen_policies = (1 if s.shared else 2 + s.token_reward) if s.lora_r else 1 + s.token_reward
    rm_weights = rm.linear_weights(s.prepack_min_elements, lm_head=False)
    critic_copy = s.critic_lora_r and not (s.shared and s.critic_bytes == s.rm_bytes)  # its own frozen backbone
    return (frozen_policies * policy_weights * packed(s.weight_bytes) + rm_weights * packed(s.rm_bytes)
            + (rm_weights * packed(s.critic_bytes) if critic_copy else 0))


def training_stages_memory(policy: Shape, rm: Shape, s: Setting, batch: int = 64) -> dict[str, float]:
    """The peak of each stage before PPO, in bytes: what it holds plus one forward and backward's
    transient, at `batch` examples per forward (SFT: demonstrations; RM, DPO: pairs): the stage's
    `*.batch_size` (64 by default), or its `*.micro_batch_size` where set, which splits a batch without
    changing the training (gradients accumulate in the buffers counted anyway). What the stage's training
    module holds, on the device it trains on: the trained model's weights, gradients and AdamW moments
    (LoRA: its adapters' only; the reward model's are `critic_lora_r`'s, both following `reward_model`'s
    options), and for DPO without `dpo.precompute_ref` its reference, the SFT policy (one base with LoRA,
    and its adapter; with the reference log-probs precomputed, the default, the module holds none); the
    cached GGUF weights (a CPU preset's). The models of earlier stages stay in the process's (host) memory,
    moved off the GPU when their stage ends: on a CPU add the SFT policy's weights to the reward model's
    figure, and (with `dpo.precompute_ref`) to DPO's.
    Transient: the activations the backward keeps (`activation_values`) over the forward's tokens, each
    pair's prompt run once for both responses (without gradient checkpointing, which turns that sharing
    off), and the fp32 response logits of SFT and DPO with their log-softmax and gradient
    (`3 x 4 x rows x R x V`)."""
    b, T, R = s.weight_bytes, s.prompt_tokens + s.response_tokens, s.response_tokens
    lora, rm_lora = policy.lora_params(s.lora_r), rm.lora_params(s.critic_lora_r)
    weights = policy.params * b
    cache = cached_gguf_bytes(policy, s)

    def trained(adapter: float, full: float) -> float:
        """Beyond the base weights: a LoRA's fp32 adapter, its gradient and AdamW moments; else the
        full weights' gradient and moments (`lora_params(0)` is 0)."""
        return 4 * adapter + 3 * 4 * adapter if adapter else 3 * full
    # DPO's reference where a step reads it: with LoRA the SFT adapter on the policy's base (its own base
    # unshared, under FSDP); without, a full copy
    if s.dpo_precompute_ref:
        reference = 0.0
    else:
        reference = ((0.0 if s.shared else weights) + 4 * lora) if s.lora_r else weights

    def pair_tokens(pairs: int, checkpointing: bool) -> float:
        return 2 * pairs * T if checkpointing else pairs * s.prompt_tokens + 2 * pairs * R

    def logits(rows: int) -> float:
        return 3 * 4 * rows * R * policy.vocab

    return {
        "sft": weights + trained(lora, weights) + cache + logits(batch)
        + policy.activation_values(batch * T, s.checkpointing) * b,
        "rm": rm.params * s.rm_bytes + trained(rm_lora, rm.params * s.rm_bytes)
        + rm.activation_values(pair_tokens(batch, s.critic_checkpointing), s.critic_checkpointing) * s.rm_bytes,
        "dpo": weights + reference + trained(lora, weights) + cache + logits(2 * batch)
        + policy.activation_values(pair_tokens(batch, s.checkpointing), s.checkpointing) * b,
    }


# the pretrained presets' models (their config.json; GPT-2's and Pythia's GELU MLP of width 4h is
# counted as a SwiGLU one, which overestimates its activations; its packed weights count its two
# matrices), and how each preset runs them (the reward model and the critic in the policy's dtype:
# `reward_model.dtype` follows `model.dtype`)
SMOLLM2_135M = Shape(134.5e6, 30, 576, 192, 1536, 49152)
PRESETS = {  # preset -> (policy, reward model (None: the policy's backbone), setting)
    "gpt2": (Shape(124.4e6, 12, 768, 768, 3072, 50257, linear_blocks=False, mlp_matrices=2), None, Setting()),
    "pythia-160m": (Shape(162.3e6, 12, 768, 768, 3072, 50304, mlp_matrices=2), None, Setting()),
    "smollm2-135m-instruct": (SMOLLM2_135M, None, Setting()),
    "smollm2-135m-gguf": (SMOLLM2_135M, None, Setting(gguf=True)),
    "qwen2.5-0.5b-instruct": (Shape(494.0e6, 24, 896, 128, 4864, 151936), None,
                              Setting(weight_bytes=2, rm_bytes=2, critic_bytes=2)),
    # with reward_model=pretrained: a 1B reward model (Llama-3.2-1B's shape), its critic trained fully
    # (reward_model.lora: null) and not checkpointed (reward_model.gradient_checkpointing: false)
    "llama3-8b": (Shape(8.03e9, 32, 4096, 1024, 14336, 128256), Shape(1.236e9, 16, 2048, 512, 8192, 128256),
                  Setting(weight_bytes=2, rm_bytes=2, critic_bytes=2, lora_r=16, checkpointing=True)),
}


def preset_table(micro: Optional[int] = None) -> str:
    """The estimate per preset on one device, and what a CPU process adds (`cpu_prepack`'s packed copies)."""
    rows = ["| preset | held (GB) | sampling KV | experience logits | update activations | total (GB) "
            "| + on a CPU, packed frozen weights, 32-true / bf16-mixed (GB) |", "|---|---|---|---|---|---|---|"]
    for name, (policy, rm, setting) in PRESETS.items():
        setting = replace(setting, micro=micro)
        parts = ppo_memory(policy, rm or policy, setting)
        rows.append(f"| {name} | {held_bytes(parts) / GB:.1f} | {parts['sampling KV cache'] / GB:.1f} | "
                    f"{parts['experience logits'] / GB:.1f} | {parts['update activations'] / GB:.1f} | "
                    f"{parts['total'] / GB:.1f} | {packed_frozen_bytes(policy, rm or policy, setting) / GB:.1f} / "
                    f"{packed_frozen_bytes(policy, rm or policy, replace(setting, bf16_mixed=True)) / GB:.1f} |")
    return "\n".join(rows)


def stages_table() -> str:
    """The stages before PPO per preset, a batch of 64 in one piece (the default) and in micro-batches of
    8 (`<stage>.micro_batch_size=8`), GB."""
    rows = ["| preset | SFT, 64 / 8 | RM, 64 / 8 pairs | DPO, 64 / 8 pairs |", "|---|---|---|---|"]
    for name, (policy, rm, setting) in PRESETS.items():
        full, small = (training_stages_memory(policy, rm or policy, setting, batch) for batch in (64, 8))
        cells = [f"{full[k] / GB:.1f} / {small[k] / GB:.1f}" for k in ("sft", "rm", "dpo")]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    for micro in (None, 4):
        print(f"\nppo.micro_batch_size={micro}\n" + preset_table(micro))
    print("\nSFT, RM and DPO: a batch of 64 (the default) in one piece / in micro-batches of 8 "
          "(`<stage>.micro_batch_size=8`)\n" + stages_table())
