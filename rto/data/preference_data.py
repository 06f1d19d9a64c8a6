"""A real preference set (hub id or local file) -> the `DataBundle` every stage reads.

- preference pairs: `data.path` / `data.split` in `data.format` (see `preference_formats`);
- SFT demonstrations: the chosen responses, or `data.sft_path` (`messages`, or prompt + response);
- RL prompts: the pairs' prompts, or `data.prompts_path` (its `data.prompt_column`);
- test prompts (the final table): `data.test_path` / `data.test_split`, or `data.test_prompt_fraction`
  of the distinct prompts held out;
- validation prompts (tuning and selection): `data.val_prompt_fraction` of the remaining distinct
  prompts held out. No training row ever uses a validation or test prompt.

There is no gold judge: `DataBundle.gold` is None, and evaluation reports the reward model's score,
the KL and, when `eval.judge` names a held-out reward model, the win rate it judges.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Optional

import numpy as np
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from rto.data.bundle import DataBundle, split_pairs
from rto.data.collate import Encoder
from rto.data.preference_formats import FORMATS, Prompt, convert_rows, prompt_key, prompt_row, sft_row
from rto.data.tables import load_table
from rto.data.validate import apply_prompt_limit
from rto.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _table(cfg: DictConfig, path: str, split: Optional[str]):
    return load_table(path, split or cfg.split, cfg.get("limit"))


def load_preference_data(cfg: DictConfig, tokenizer: Optional[PreTrainedTokenizerBase]) -> DataBundle:
    if tokenizer is None:
        raise ConfigError(f"data={cfg.name} is text from a real preference set: it needs the tokenizer of a "
                         f"pretrained model, so set model.pretrained (e.g. model=smollm2-135m-instruct)")
    if cfg.format not in FORMATS:
        raise ConfigError(f"data.format={cfg.format!r} is not one of {', '.join(FORMATS)}")
    encoder = Encoder(tokenizer, cfg.max_prompt_tokens, cfg.max_response_tokens, append_eos=True,
                      chat_template=cfg.chat_template, join_plain_prompts=True)
    on_invalid, column = cfg.on_invalid, cfg.prompt_column
    convert = FORMATS[cfg.format]
    if cfg.format == "plain":
        convert = partial(convert, prompt_column=column)
    pairs = convert_rows(_table(cfg, cfg.path, cfg.split), convert, f"{cfg.path} [{cfg.split}]", on_invalid)
    sft_rows = ([{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs] if not cfg.sft_path else
                convert_rows(_table(cfg, cfg.sft_path, cfg.sft_split), partial(sft_row, prompt_column=column),
                             f"{cfg.sft_path} [{cfg.sft_split or cfg.split}]", on_invalid))
    prompts = ([p["prompt"] for p in pairs] if not cfg.prompts_path else
               convert_rows(_table(cfg, cfg.prompts_path, cfg.prompts_split), partial(prompt_row, prompt_column=column),
                            f"{cfg.prompts_path} [{cfg.prompts_split or cfg.split}]", on_invalid))

    policy = cfg.truncate_prompts
    pairs = apply_prompt_limit(pairs, lambda r: r["prompt"], encoder, policy, "preference pairs")
    sft_rows = apply_prompt_limit(sft_rows, lambda r: r["prompt"], encoder, policy, "SFT rows")
    prompts = apply_prompt_limit(_unique(prompts), lambda p: p, encoder, policy, "RL prompts")

    if cfg.test_path or cfg.test_split:
        test_table = _table(cfg, cfg.test_path or cfg.path, cfg.test_split)
        if cfg.test_format == "prompts":
            test = convert_rows(test_table, partial(prompt_row, prompt_column=column), "test prompts", on_invalid)
        else:
            test = [r["prompt"] for r in convert_rows(test_table, convert, "test pairs", on_invalid)]
        test = apply_prompt_limit(_unique(test), lambda p: p, encoder, policy, "test prompts")
    else:
        test = _hold_out(prompts, cfg.test_prompt_fraction, cfg.seed)
    test_keys = {prompt_key(p) for p in test}
    val = _hold_out([p for p in prompts if prompt_key(p) not in test_keys], cfg.val_prompt_fraction, cfg.seed + 1)
    keys = test_keys | {prompt_key(p) for p in val}
    pairs = [r for r in pairs if prompt_key(r["prompt"]) not in keys]
    sft_rows = [r for r in sft_rows if prompt_key(r["prompt"]) not in keys]
    prompts = [p for p in prompts if prompt_key(p) not in keys]
    for name, rows in (("preference pairs", pairs), ("SFT rows", sft_rows), ("RL prompts", prompts),
                       ("validation prompts", val), ("test prompts", test)):
        if not rows:
            raise DataError(f"data={cfg.name}: no {name} left after conversion, limits and the held-out split")
    train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    val, test = val[:cfg.n_val_prompts], test[:cfg.n_test_prompts]
    log.info("data=%s: %d SFT rows, %d/%d train/held-out pairs, %d/%d/%d train/validation/test prompts", cfg.name,
             len(sft_rows), len(train_pairs), len(val_pairs), len(prompts), len(val), len(test))
    return DataBundle(tokenizer=tokenizer, encoder=encoder, sft_rows=sft_rows, train_pairs=train_pairs,
                      val_pairs=val_pairs, train_prompts=prompts, val_prompts=val, test_prompts=test,
                      gold=None)


def _unique(prompts: list[Prompt]) -> list[Prompt]:
    seen: dict[str, Prompt] = {}
    for p in prompts:
        seen.setdefault(prompt_key(p), p)
    return list(seen.values())


def _hold_out(prompts: list[Prompt], fraction: float, seed: int) -> list[Prompt]:
    """A seeded `fraction` of the distinct prompts (at least one), never trained on."""
    order = np.random.default_rng(seed).permutation(len(prompts))
    n = max(1, int(round(len(prompts) * fraction)))
    return [prompts[i] for i in sorted(order[:n])]
