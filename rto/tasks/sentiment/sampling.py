"""Two samples of a policy per prompt, decoded: the raw material of the task's preference pairs.

Prompts go through the tokenizer's chat template (as the pipeline's `Encoder` does for pretrained
models); responses come from the pipeline's own KV-cache sampler and are decoded with their special
tokens kept, so a response that ended carries the EOS text at its end and one cut off at
`max_new_tokens` does not: the gold reads that difference (`gold.END_MARKER`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from rto.data.collate import Encoder, encode_prompts
from rto.rl.rollout import sample_responses


@dataclass(frozen=True)
class ResponsePairs:
    first: list[str]
    second: list[str]
    first_ended: list[bool]   # the response reached EOS within max_new_tokens
    second_ended: list[bool]
    first_lengths: list[int]  # response tokens, EOS included
    second_lengths: list[int]
    seconds: float            # wall time of sampling and decoding

    @property
    def n_tokens(self) -> int:
        return sum(self.first_lengths) + sum(self.second_lengths)


def chat_encoder(tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int, max_response_tokens: int) -> Encoder:
    """Prompts through the chat template; responses keep the EOS they were sampled with (no EOS is
    appended: a cut-off response stays cut off for the reward model and DPO too)."""
    return Encoder(tokenizer, max_prompt_tokens, max_response_tokens, append_eos=False, chat_template=True)


def decode(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=False) for row, m in zip(ids, mask)]


def sample_response_pairs(model, encoder: Encoder, prompts: Sequence[str], max_new_tokens: int,
                          temperature: float = 1.0, seed: int = 0, batch_size: int = 16) -> ResponsePairs:
    """Two independent samples per prompt, `batch_size` prompts (2 x batch_size rows) per sampler
    call. Deterministic for the same model, prompts, seed and batch size."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    tokenizer = encoder.tokenizer
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    out: dict[str, list] = {f"{which}{part}": [] for which in ("first", "second")
                            for part in ("", "_ended", "_lengths")}
    start = time.perf_counter()
    for lo in range(0, len(prompts), batch_size):
        chunk = list(prompts[lo:lo + batch_size])
        batch = encode_prompts(encoder, chunk + chunk)  # rows i and i + len(chunk): the two samples of prompt i
        ids, mask = sample_responses(model, batch["prompt_ids"].to(device), batch["prompt_mask"].to(device),
                                     max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                     temperature=temperature, generator=generator)
        ids, mask = ids.cpu(), mask.cpu()
        texts = decode(tokenizer, ids, mask)
        ended = ((ids == tokenizer.eos_token_id) & mask.bool()).any(dim=1).tolist()
        lengths = mask.sum(dim=1).tolist()
        n = len(chunk)
        for which, rows in (("first", slice(0, n)), ("second", slice(n, 2 * n))):
            out[which] += texts[rows]
            out[f"{which}_ended"] += ended[rows]
            out[f"{which}_lengths"] += lengths[rows]
    return ResponsePairs(**out, seconds=time.perf_counter() - start)
