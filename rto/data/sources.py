"""Where the rows come from. `data=embedded` generates the task with a gold reward;
other sources (files, the hub) give the same row schemas without a gold judge."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from rto.data.bundle import DataBundle, split_pairs
from rto.data.collate import Encoder
from rto.data.preference_data import load_preference_data
from rto.data.validate import check_set_sizes, validate_bundle, validation_options
from rto.errors import ConfigError
from rto.tasks.embedded import EmbeddedTask, build_tokenizer, gold_rewards, gold_token_rewards, optimal_rewards
from rto.tasks.sentiment.source import load_sentiment


def load_embedded(data_cfg: DictConfig) -> DataBundle:
    try:  # the task checks its sizes (`n_sft must be >= 0, got -1`): they are data.* keys
        task = EmbeddedTask(
            seed=data_cfg.seed,
            n_sft=data_cfg.n_sft,
            n_pairs=data_cfg.n_pairs,
            n_train_prompts=data_cfg.n_train_prompts,
            n_val_prompts=data_cfg.n_val_prompts,
            n_test_prompts=data_cfg.n_test_prompts,
            val_prompt_fraction=data_cfg.val_prompt_fraction,
            test_prompt_fraction=data_cfg.test_prompt_fraction,
            bt_temperature=data_cfg.bt_temperature,
            max_response_words=data_cfg.max_response_words,
        )
        sft_rows, pairs = task.sft_rows(), task.preference_rows()
    except ValueError as err:
        raise ConfigError(f"data.{err}") from err
    tokenizer = build_tokenizer()
    encoder = Encoder(tokenizer, data_cfg.max_prompt_tokens, data_cfg.max_response_tokens, append_eos=False)
    train_pairs, val_pairs = split_pairs(pairs, data_cfg.val_fraction, data_cfg.seed)
    return DataBundle(
        tokenizer=tokenizer,
        encoder=encoder,
        sft_rows=sft_rows,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        train_prompts=task.prompts("train"),
        val_prompts=task.prompts("val"),
        test_prompts=task.prompts("test"),
        gold=lambda prompts, responses: np.asarray(gold_rewards(prompts, responses), dtype=float),
        gold_tokens=gold_token_rewards,
        optimum=optimal_rewards,
    )


# each source gets the data config and the pretrained model's tokenizer (None for a model built from scratch)
SOURCES: dict[str, Callable[[DictConfig, Optional[PreTrainedTokenizerBase]], DataBundle]] = {
    "embedded": lambda data_cfg, tokenizer: load_embedded(data_cfg),  # the task brings its own tokenizer
    "preferences": load_preference_data,
    "sentiment": load_sentiment,  # prompts and gold; the pairs come from the `pairs` stage
}


def load_data(data_cfg: DictConfig, tokenizer: Optional[PreTrainedTokenizerBase] = None) -> DataBundle:
    source = data_cfg.get("source") or data_cfg.name
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r} is not a known source ({', '.join(SOURCES)})")
    # every source's rows are validated here, before any training
    # (real sources apply `data.truncate_prompts` to long prompts themselves)
    bundle = validate_bundle(SOURCES[source](data_cfg, tokenizer), **validation_options(data_cfg))
    check_set_sizes(bundle, data_cfg)  # an empty set stops here, not after training on nothing
    return bundle
