"""Which mode (train / eval) each forward of the RL loop runs in, set on purpose.

The PPO ratio `pi_theta / pi_old` is 1 at the first minibatch only if both sides are computed the
same way, so the rule is: every forward of the RL loop runs with dropout off (LoRA dropout
included) -- sampling, the experience (pi_old, reference, DPO model, critic, reward model), the
PPO update and evaluation. A model's mode is never inherited from how it was loaded
(`from_config` gives train mode, `from_pretrained` eval, a peft adapter loaded trainable train).

- `inference_mode`: eval mode. Sampling, experience and evaluation.
- `update_mode`: the PPO update's forward and backward. Eval mode too (dropout off), except that a
  gradient-checkpointed decoder layer gets its own `training` flag back: transformers checkpoints a
  layer only in training mode, while dropout lives in the layer's submodules (attention, MLP, LoRA
  layers), which stay in eval mode (so in the Llama, Qwen2, Mistral, GPT-2 and GPT-NeoX layers,
  checked; a layer that applies dropout itself with its own flag, as OPT's and Falcon's do, would
  keep it under checkpointing). With `ppo.dropout=true` the update runs in train mode instead
  (dropout on; the ratio then starts away from 1 by design).
"""

from __future__ import annotations

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


def inference_mode(*models: nn.Module | None) -> None:
    for model in models:
        if model is not None:
            model.eval()


def update_mode(*models: nn.Module, dropout: bool = False) -> None:
    for model in models:
        if dropout:
            model.train()
            continue
        model.eval()
        for layer in model.modules():
            if isinstance(layer, GradientCheckpointingLayer) and layer.gradient_checkpointing:
                layer.training = True  # this flag only, not its submodules': checkpointing on, dropout off
