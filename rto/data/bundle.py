"""What every data source hands the stages: the `DataBundle`, and the seeded split of preference
pairs into training and held-out rows. A leaf module: sources import it, it imports no source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from transformers import PreTrainedTokenizerBase

from rto.data.collate import Encoder

PROMPT_SETS = ("train", "val", "test")
# a gold judge scores (prompt, response) texts; None where the data has no known reward
GoldJudge = Callable[[list[str], list[str]], np.ndarray]
# the dense part of a gold reward: one value per word of a (prompt, response text); None where there is none
GoldTokens = Callable[[str, str], list[float]]


@dataclass
class DataBundle:
    tokenizer: PreTrainedTokenizerBase
    encoder: Encoder
    sft_rows: list[dict]
    train_pairs: list[dict]
    val_pairs: list[dict]
    train_prompts: list[str]   # RL prompts (SFT rows and pairs use training prompts only)
    val_prompts: list[str]     # every tuning, stopping or selection choice is made on these
    test_prompts: list[str]    # the final table only
    gold: Optional[GoldJudge] = None
    # the gold's per-word terms (the credit-assignment metric and the token page compare DPO's token
    # rewards with them); only a task with a word-level gold has them (the embedded task)
    gold_tokens: Optional[GoldTokens] = None
    # the best gold reward reachable on each prompt, where the task knows it (for "fraction of optimum")
    optimum: Optional[Callable[[list[str]], np.ndarray]] = None
    # sets this source leaves empty on purpose (filled by a stage, or not needed): no size check at load
    deferred: tuple[str, ...] = ()

    def prompts(self, prompt_set: str) -> list[str]:
        """`train`, `val` or `test`."""
        if prompt_set not in PROMPT_SETS:
            raise ValueError(f"unknown prompt set {prompt_set!r}; expected one of {', '.join(PROMPT_SETS)}")
        return getattr(self, f"{prompt_set}_prompts")


def pairs_from_policy(cfg) -> bool:
    """Whether the preference pairs are sampled from the SFT policy by the `pairs` stage (the sentiment
    task) rather than given by the data: then the reward model and DPO need that stage."""
    return bool(cfg.data.get("pairs_from_policy", False))


def split_pairs(pairs: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded `val_fraction` of the pairs held out (the reward model's accuracy is measured on them)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = int(round(len(pairs) * val_fraction))
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]
