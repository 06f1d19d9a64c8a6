"""Where Semi-RTO's segments end (the reward then sums the DPO token rewards of each segment and
places the sum on its last token; the last real token always closes a segment).

- `reward=semi`: the paper's Semi-RTO, segments closed by sentence delimiters: a response token
  whose text ends with one of `reward.delimiters` (".", "!", "?" by default; a whitespace
  delimiter such as a newline counts anywhere in the token, so ".\\n" and "\\n\\n" close too).
- `reward=semi_window`: a fixed window of `reward.segment_len` tokens, a different variant, for
  languages without delimiter tokens (the embedded task's words have none).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from omegaconf import DictConfig
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from rto.config import ConfigError

# (response_ids [B, R], mask [B, R]) -> bool [B, R], True on the last token of a segment
Segments = Callable[[Tensor, Tensor], Tensor]


class WindowSegments:
    def __init__(self, window: int):
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ConfigError(f"reward.segment_len must be an integer >= 1, got {window!r}")
        self.window = window

    def __call__(self, response_ids: Tensor, mask: Tensor) -> Tensor:
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        return ((positions + 1) % self.window == 0) & mask.bool()


def closes_sentence(text: str, delimiters: Sequence[str]) -> bool:
    stripped = text.strip()
    return any(d in text if not d.strip() else stripped.endswith(d) for d in delimiters)


class DelimiterSegments:
    """A lookup table over the vocabulary, built once: token id -> closes a sentence."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, delimiters: Sequence[str]):
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        special = set(tokenizer.all_special_ids)
        self.is_delimiter = torch.tensor([i not in special and closes_sentence(t, delimiters)
                                          for i, t in enumerate(texts)], dtype=torch.bool)
        if not self.is_delimiter.any():
            raise ConfigError(
                f"reward=semi closes segments at delimiter tokens (reward.delimiters={list(delimiters)}), but no "
                f"token of this tokenizer is one (the embedded task's language has none): use reward=semi_window "
                f"(segments of reward.segment_len tokens) or set reward.delimiters")

    def __call__(self, response_ids: Tensor, mask: Tensor) -> Tensor:
        table = self.is_delimiter.to(response_ids.device)
        inside = (response_ids >= 0) & (response_ids < table.numel())  # ids past the tokenizer: no delimiter
        safe = torch.where(inside, response_ids, torch.zeros_like(response_ids))
        return table[safe] & inside & mask.bool()


def segments_for(reward_cfg: DictConfig, tokenizer: PreTrainedTokenizerBase | None) -> Segments | None:
    """The segmenter a reward variant needs (None for the variants without segments)."""
    if reward_cfg.name == "semi_window":
        return WindowSegments(reward_cfg.segment_len)
    if reward_cfg.name == "semi":
        if tokenizer is None:
            raise ValueError("reward=semi needs the policy's tokenizer to find its delimiter tokens")
        return DelimiterSegments(tokenizer, list(reward_cfg.delimiters))
    return None
