"""LoRA through peft: adapters on the policy (saved as adapters) and on the reward model / critic backbone.

A policy checkpoint trained with LoRA is `adapter_config.json + adapter_model.safetensors` on top of
`model.pretrained`; DPO and PPO load the SFT adapter and keep training it, so every stage's checkpoint
is the base model plus one adapter.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

ADAPTER_CONFIG = "adapter_config.json"
log = logging.getLogger(__name__)


def lora_config(node: DictConfig, task_type: TaskType) -> LoraConfig:
    """A peft LoraConfig from the `model.lora` node (r, alpha, dropout, target_modules)."""
    target = node.get("target_modules", "all-linear")
    if OmegaConf.is_list(target):
        target = list(target)
    return LoraConfig(r=int(node.r), lora_alpha=float(node.alpha), lora_dropout=float(node.get("dropout", 0.0)),
                      target_modules=target, task_type=task_type, bias="none")


def add_lora(model: PreTrainedModel, node: DictConfig, task_type: TaskType = TaskType.CAUSAL_LM) -> PeftModel:
    peft_model = get_peft_model(model, lora_config(node, task_type))
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA: %.2fM of %.2fM parameters trainable", trainable / 1e6, total / 1e6)
    return peft_model


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).exists()


def load_adapter(base: PreTrainedModel, folder: str | Path) -> PeftModel:
    """The base model with a saved adapter, trainable (frozen copies are frozen by their stage)."""
    return PeftModel.from_pretrained(base, str(folder), is_trainable=True)

