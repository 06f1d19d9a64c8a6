"""Scoring the policy's responses with a reward model that may have another tokenizer.

Ids of one tokenizer are never fed to a model of another: when the tokenizers differ, the
response is decoded to text and re-tokenized with the reward model's own `Encoder` (its chat
template, BOS and EOS), the prompt re-rendered from its original text or messages.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from rto.data.collate import Encoder, encode_prompts, right_pad
from rto.data.preference_formats import Prompt
from rto.errors import TokenizerMismatchError
from rto.models.forward import common_prefix_length, repeated_prompt_rows
from rto.models.scalar_head import ScalarHeadModel

log = logging.getLogger(__name__)


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Same vocabulary and special tokens: ids mean the same text in both."""
    if a is b:
        return True
    return (a.get_vocab() == b.get_vocab() and a.bos_token_id == b.bos_token_id
            and a.eos_token_id == b.eos_token_id)


def check_same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, a_name: str, b_name: str) -> None:
    if not same_tokenizer(a, b):
        raise TokenizerMismatchError(f"{a_name} and {b_name} have different tokenizers ({len(a)} vs {len(b)} tokens): "
                         f"one's ids would be fed to a model of the other; use data with text that the "
                         f"model's tokenizer encodes (a real preference set) or a model built from scratch")


class RewardScorer(nn.Module):
    """`score(policy batch, prompts) -> [B]` for a reward model with its own tokenizer.

    Re-tokenized responses keep their ending: a response that ended with the policy's EOS gets the
    reward model's EOS, one cut at the length limit without EOS gets none (as on the same-tokenizer
    path, where the policy's ids are scored as they are). A re-tokenized response longer than the
    reward model's limit (`max_response_tokens` of its encoder) is cut there and counted:
    `last_truncated` (the last call) and `truncated` (in total)."""

    def __init__(self, model: ScalarHeadModel, encoder: Encoder, policy_tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.model = model
        self.encoder = encoder
        self.policy_tokenizer = policy_tokenizer
        self.retokenize = not same_tokenizer(encoder.tokenizer, policy_tokenizer)
        self.last_truncated = self.truncated = 0

    def response_texts(self, response_ids: Tensor, response_mask: Tensor) -> list[str]:
        return [self.policy_tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True)
                for row, m in zip(response_ids.cpu(), response_mask.cpu())]

    def response_ids(self, response_ids: Tensor, response_mask: Tensor,
                     prompts: Optional[list[Prompt]] = None) -> list[list[int]]:
        """The responses in the reward model's ids (as they follow their prompts, `Encoder.response_tokens`),
        each ending with its EOS iff the policy's did."""
        ids, mask = response_ids.cpu(), response_mask.bool().cpu()
        last = (mask.long().cumsum(dim=1) == mask.sum(dim=1, keepdim=True)).long().argmax(dim=1)  # last real slot
        ended = (ids.gather(1, last.unsqueeze(1)).squeeze(1) == self.policy_tokenizer.eos_token_id) & mask.any(dim=1)
        tokenizer, limit = self.encoder.tokenizer, self.encoder.max_response_tokens
        texts = self.response_texts(response_ids, response_mask)
        tokens = self.encoder.responses_tokens(texts, list(prompts) if prompts is not None else [None] * len(texts))
        rows = [row + ([tokenizer.eos_token_id] if eos else []) for row, eos in zip(tokens, ended.tolist())]
        self.last_truncated = sum(len(r) > limit for r in rows)
        self.truncated += self.last_truncated
        if self.last_truncated:
            log.debug("%d of %d re-tokenized responses cut at the reward model's %d tokens",
                      self.last_truncated, len(rows), limit)
        return [r[:limit] for r in rows]

    @torch.no_grad()
    def score(self, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
              prompt_text: Optional[list[Prompt]] = None, share_repeated: bool = False,
              prefix_len: int = 0) -> Tensor:
        """`share_repeated`: a batch whose prompts repeat (k samples per prompt) runs each prompt once;
        `prefix_len`: the policy's prompts share their first `prefix_len` tokens, run once (prompts
        re-tokenized for the reward model share their own prefix, whatever its length: a frozen model
        whose score no later forward has to match)."""
        if self.retokenize:
            if not prompt_text:
                raise ValueError("re-tokenizing for the reward model needs the prompts' text")
            device = response_ids.device
            batch = encode_prompts(self.encoder, list(prompt_text))
            ids, mask = right_pad(self.response_ids(response_ids, response_mask, prompt_text), self.encoder.pad_id)
            prompt_ids, prompt_mask = batch["prompt_ids"].to(device), batch["prompt_mask"].to(device)
            response_ids, response_mask = ids.to(device), mask.to(device)
            prefix_len = common_prefix_length(prompt_ids, prompt_mask, 1) if prefix_len else 0
        rows = repeated_prompt_rows({"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}) if share_repeated else None
        if rows is not None:
            return self.model.score_pairs(prompt_ids, prompt_mask, response_ids, response_mask, rows=rows,
                                          prefix_len=prefix_len)
        return self.model.score(prompt_ids, prompt_mask, response_ids, response_mask, prefix_len=prefix_len)
