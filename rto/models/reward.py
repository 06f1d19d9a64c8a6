"""The reward model and the critic: from the SFT policy's backbone (`reward_model=same`) or from a
separate, possibly smaller pretrained model with its own tokenizer (`reward_model=pretrained`)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig
from peft import TaskType
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from rto.data.collate import Encoder
from rto.errors import ModelError, TokenizerMismatchError
from rto.models.factory import DTYPES, from_pretrained, load_policy, load_tokenizer, pretrained_kwargs
from rto.models.lora import add_lora
from rto.models.pretrained_cache import shares_frozen_weights
from rto.models.retokenize import RewardScorer, same_tokenizer
from rto.models.scalar_head import ScalarHeadModel

log = logging.getLogger(__name__)


def reward_tokenizer(rm_cfg: DictConfig, policy_tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    return policy_tokenizer if rm_cfg.source == "same" else load_tokenizer(rm_cfg, rm_cfg.path)


def _trainable_options(model: ScalarHeadModel, lora, gradient_checkpointing: bool) -> ScalarHeadModel:
    if gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        if gradient_checkpointing:
            model.backbone.enable_input_require_grads()
        model.backbone = add_lora(model.backbone, lora, TaskType.FEATURE_EXTRACTION)  # the head stays trainable
    return model


def _options_of(rm_cfg: DictConfig, model_cfg: DictConfig) -> tuple:
    node = model_cfg if rm_cfg.source == "same" else rm_cfg
    return node.get("lora"), bool(node.get("gradient_checkpointing"))


def new_reward_model(rm_cfg: DictConfig, model_cfg: DictConfig, sft) -> ScalarHeadModel:
    """The model RM training starts from: a fresh scalar head on the chosen backbone."""
    if rm_cfg.source == "same":
        model = ScalarHeadModel.from_causal_lm(sft)
    else:
        # its own weights, never shared: a LoRA reward model is merged into them in place when saved
        backbone = from_pretrained(AutoModel, rm_cfg.path, "reward_model.path", dtype=DTYPES[rm_cfg.dtype],
                                   **pretrained_kwargs(rm_cfg))
        log.info("reward model backbone %s: %.2fM parameters", rm_cfg.path, backbone.num_parameters() / 1e6)
        model = ScalarHeadModel(backbone)
    return _trainable_options(model, *_options_of(rm_cfg, model_cfg))


def new_critic(rm_cfg: DictConfig, model_cfg: DictConfig, rm_path: Path, sft_path: Path,
               policy_tokenizer: PreTrainedTokenizerBase, rm_tokenizer: PreTrainedTokenizerBase,
               reward_model: Optional[ScalarHeadModel] = None) -> ScalarHeadModel:
    """PPO's critic. Its values are per *policy* token, so it reads the policy's ids: initialised from
    the reward model only when both share a tokenizer. A LoRA critic (its backbone frozen) built from
    the frozen `reward_model` in memory (the one saved at `rm_path`) shares its backbone weights."""
    if rm_cfg.source == "same" or rm_cfg.critic_init == "rm":
        if not same_tokenizer(policy_tokenizer, rm_tokenizer):
            raise TokenizerMismatchError(
                f"the critic gives a value per policy token, but the reward model {rm_cfg.path} has another "
                f"tokenizer than the policy: set reward_model.critic_init=policy (critic from the SFT backbone)")
        lora, checkpointing = _options_of(rm_cfg, model_cfg)
        shared = reward_model.sharing_backbone() if lora and reward_model is not None and shares_frozen_weights() \
            else None  # None too where the reward model in memory differs from its folder (an unmerged LoRA)
        critic = ScalarHeadModel.from_pretrained(rm_path) if shared is None else shared
        return _trainable_options(critic, lora, checkpointing)
    sft = load_policy(sft_path, model_cfg, trainable=False)
    return _trainable_options(ScalarHeadModel.from_causal_lm(sft), model_cfg.get("lora"),
                              bool(model_cfg.get("gradient_checkpointing")))


def judge_scorer(path: Optional[str], policy_encoder: Encoder,
                 policy_tokenizer: PreTrainedTokenizerBase) -> Optional[RewardScorer]:
    """A held-out reward model (a `ScalarHeadModel` folder with its tokenizer, e.g. another run's
    checkpoints/rm) that judges the win rate where the data has no gold reward."""
    if not path:
        return None
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"eval.judge={path} is not a folder")
    tokenizer = from_pretrained(AutoTokenizer, folder, "eval.judge")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    judge = ScalarHeadModel.from_pretrained(folder).eval().requires_grad_(False)
    return RewardScorer(judge, dataclasses.replace(policy_encoder, tokenizer=tokenizer), policy_tokenizer)
