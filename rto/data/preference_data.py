"""A real preference set (hub id or local file) -> the `DataBundle` every stage reads.

- preference pairs: `data.path` / `data.split` in `data.format` (see `preference_formats`);
- SFT demonstrations: the chosen responses, or `data.sft_path` (`messages`, or prompt + response);
- RL prompts: the pairs' prompts, or `data.prompts_path` (its `data.prompt_column`);
- evaluation prompts: `data.eval_path` / `data.eval_split`, or `data.eval_fraction` of the prompts
  held out (no training row ever uses a held-out prompt).

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

from rto.data.collate import Encoder
from rto.data.preference_formats import FORMATS, Prompt, convert_rows, prompt_key, prompt_row, sft_row
from rto.data.tables import load_table
from rto.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _table(cfg: DictConfig, path: str, split: Optional[str]):
    return load_table(path, split or cfg.split, cfg.get("limit"))


def _apply_prompt_limit(rows: list, prompt_of, encoder: Encoder, policy: str, what: str) -> list:
    """Count prompts over `max_prompt_tokens`; keep them (the encoder keeps their last tokens) or drop them."""
    if policy not in ("left", "drop"):
        raise ConfigError(f"data.truncate_prompts must be left or drop, got {policy!r}")
    too_long = [encoder.prompt_length(prompt_of(row)) > encoder.max_prompt_tokens for row in rows]
    n_long = int(sum(too_long))
    if n_long:
        action = "dropped" if policy == "drop" else "truncated from the left"
        log.warning("%s: %d of %d prompts exceed data.max_prompt_tokens=%d and are %s",
                    what, n_long, len(rows), encoder.max_prompt_tokens, action)
    return [row for row, long in zip(rows, too_long) if not long] if policy == "drop" else rows


def load_preference_data(cfg: DictConfig, tokenizer: Optional[PreTrainedTokenizerBase]) -> "DataBundle":
    from rto.data.sources import DataBundle, split_pairs

    if tokenizer is None:
        raise ConfigError(f"data={cfg.name} is text from a real preference set: it needs the tokenizer of a "
                         f"pretrained model, so set model.pretrained (e.g. model=smollm2-135m-instruct)")
    if cfg.format not in FORMATS:
        raise ConfigError(f"data.format={cfg.format!r} is not one of {', '.join(FORMATS)}")
    encoder = Encoder(tokenizer, cfg.max_prompt_tokens, cfg.max_response_tokens, append_eos=True,
                      chat_template=cfg.chat_template)
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
    pairs = _apply_prompt_limit(pairs, lambda r: r["prompt"], encoder, policy, "preference pairs")
    sft_rows = _apply_prompt_limit(sft_rows, lambda r: r["prompt"], encoder, policy, "SFT rows")
    prompts = _apply_prompt_limit(_unique(prompts), lambda p: p, encoder, policy, "RL prompts")

    if cfg.eval_path or cfg.eval_split:
        eval_table = _table(cfg, cfg.eval_path or cfg.path, cfg.eval_split)
        if cfg.eval_format == "prompts":
            held_out = convert_rows(eval_table, partial(prompt_row, prompt_column=column), "eval prompts", on_invalid)
        else:
            held_out = [r["prompt"] for r in convert_rows(eval_table, convert, "eval pairs", on_invalid)]
        held_out = _apply_prompt_limit(_unique(held_out), lambda p: p, encoder, policy, "eval prompts")
    else:
        held_out = _hold_out(prompts, cfg.eval_fraction, cfg.seed)
    keys = {prompt_key(p) for p in held_out}
    pairs = [r for r in pairs if prompt_key(r["prompt"]) not in keys]
    sft_rows = [r for r in sft_rows if prompt_key(r["prompt"]) not in keys]
    prompts = [p for p in prompts if prompt_key(p) not in keys]
    for name, rows in (("preference pairs", pairs), ("SFT rows", sft_rows), ("RL prompts", prompts),
                       ("eval prompts", held_out)):
        if not rows:
            raise DataError(f"data={cfg.name}: no {name} left after conversion, limits and the held-out split")
    train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    log.info("data=%s: %d SFT rows, %d/%d train/val pairs, %d RL prompts, %d eval prompts", cfg.name,
             len(sft_rows), len(train_pairs), len(val_pairs), len(prompts), len(held_out))
    return DataBundle(tokenizer=tokenizer, encoder=encoder, sft_rows=sft_rows, train_pairs=train_pairs,
                      val_pairs=val_pairs, train_prompts=prompts, eval_prompts=held_out[:cfg.n_eval_prompts],
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
