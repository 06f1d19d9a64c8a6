"""The embedded task: a toy language with a program as gold reward, so that SFT, RM, DPO, PPO and
RTO can be trained and compared end to end on a CPU in minutes."""

from rto.tasks.embedded.dataset import EmbeddedTask, label_agreement
from rto.tasks.embedded.generator import GeneratorConfig, sample_response
from rto.tasks.embedded.gold import (
    GoldParts,
    gold_parts,
    gold_reward,
    gold_rewards,
    gold_token_rewards,
    optimal_response,
    optimal_rewards,
)
from rto.tasks.embedded.language import BOS, EOS, PAD, UNK, build_tokenizer, vocabulary
from rto.tasks.embedded.prompts import PROMPT_SETS, PromptSpec, all_prompts, parse, prompt_set, split_prompts

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "UNK",
    "EmbeddedTask",
    "GeneratorConfig",
    "GoldParts",
    "PromptSpec",
    "all_prompts",
    "build_tokenizer",
    "gold_parts",
    "gold_reward",
    "gold_rewards",
    "gold_token_rewards",
    "prompt_set",
    "PROMPT_SETS",
    "label_agreement",
    "optimal_response",
    "optimal_rewards",
    "parse",
    "sample_response",
    "split_prompts",
    "vocabulary",
]
