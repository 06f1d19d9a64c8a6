"""`data=sentiment`: the sentiment task as a data source of the pipeline.

The prompts (train / validation / test) and the gold judge come from here; the preference pairs do
not: they are two samples of the SFT policy per training prompt, made by the `pairs` stage
(`rto/recipes/pairs.py`, cached like a stage) and labelled by Bradley-Terry on the gold. There are no
demonstrations either: the reference policy is the pretrained instruct model as it is (`sft.epochs=0`),
so nothing the policy is fine-tuned on before RL can carry the gold.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import numpy as np
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from rto.data.bundle import DataBundle
from rto.errors import ConfigError
from rto.tasks.sentiment.gold import gold_rewards
from rto.tasks.sentiment.prompts import sentiment_prompts
from rto.tasks.sentiment.sampling import chat_encoder


def load_sentiment(data_cfg: DictConfig, tokenizer: Optional[PreTrainedTokenizerBase]) -> DataBundle:
    if tokenizer is None:
        raise ConfigError("data=sentiment asks a pretrained chat model for short texts: set model.pretrained "
                          "(e.g. experiment=sentiment_smollm2, or model=smollm2-135m-gguf)")
    try:
        prompts = sentiment_prompts(data_cfg.seed, data_cfg.n_train_prompts, data_cfg.n_val_prompts,
                                    data_cfg.n_test_prompts)
    except ValueError as err:  # a size over its pool
        raise ConfigError(f"data.{err}") from err
    return DataBundle(
        tokenizer=tokenizer,
        encoder=chat_encoder(tokenizer, data_cfg.max_prompt_tokens, data_cfg.max_response_tokens),
        sft_rows=[], train_pairs=[], val_pairs=[],
        train_prompts=prompts.train, val_prompts=prompts.validation, test_prompts=prompts.test,
        # a response that ended carries the tokenizer's EOS text: the gold reads it as the end marker
        gold=partial(gold_rewards, end_marker=tokenizer.eos_token),
        optimum=lambda texts: np.ones(len(texts)),  # the gold's maximum is 1 (VADER's compound, no penalty)
        deferred=("sft_rows", "train_pairs", "val_pairs"),
    )
