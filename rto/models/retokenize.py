"""Scoring the policy's responses with a reward model that may have another tokenizer.

Ids of one tokenizer are never fed to a model of another: when the tokenizers differ, the
response is decoded to text and re-tokenized with the reward model's own `Encoder` (its chat
template, BOS and EOS), the prompt re-rendered from its original text or messages.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from rto.data.collate import Encoder, encode_prompts, right_pad
from rto.data.preference_formats import Prompt
from rto.errors import TokenizerMismatchError
from rto.models.scalar_head import ScalarHeadModel


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
    """`score(policy batch, prompts) -> [B]` for a reward model with its own tokenizer."""

    def __init__(self, model: ScalarHeadModel, encoder: Encoder, policy_tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.model = model
        self.encoder = encoder
        self.policy_tokenizer = policy_tokenizer
        self.retokenize = not same_tokenizer(encoder.tokenizer, policy_tokenizer)

    def response_texts(self, response_ids: Tensor, response_mask: Tensor) -> list[str]:
        return [self.policy_tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True)
                for row, m in zip(response_ids.cpu(), response_mask.cpu())]

    @torch.no_grad()
    def score(self, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
              prompt_text: Optional[list[Prompt]] = None) -> Tensor:
        if not self.retokenize:
            return self.model.score(prompt_ids, prompt_mask, response_ids, response_mask)
        if not prompt_text:
            raise ValueError("re-tokenizing for the reward model needs the prompts' text")
        device = response_ids.device
        batch = encode_prompts(self.encoder, list(prompt_text))
        ids, mask = right_pad([self.encoder.response(t) for t in self.response_texts(response_ids, response_mask)],
                              self.encoder.pad_id)
        return self.model.score(batch["prompt_ids"].to(device), batch["prompt_mask"].to(device),
                                ids.to(device), mask.to(device))
