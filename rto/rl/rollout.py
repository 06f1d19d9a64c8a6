"""Sampling responses with the KV cache.

A small hand loop rather than `generate()`: at these model sizes the per-step overhead of
the generic generation pipeline dominates, and the loop gives the exact mask semantics PPO
needs (the response ends at and includes the first EOS; a response may have none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from rto.algos.logprobs import shift_positions
from rto.models.forward import cache_keyword, cache_of


@dataclass
class Rollout:
    prompt_ids: Tensor      # [B, P] left-padded
    prompt_mask: Tensor     # [B, P]
    response_ids: Tensor    # [B, R] right-padded
    response_mask: Tensor   # [B, R] 1 on real tokens, the first EOS included
    prompt_text: list[str] = field(default_factory=list)
    # log pi(y_t) of the sampled tokens, from the sampling logits (masked slots 0); saves PPO a forward
    logprobs: Optional[Tensor] = None


def mask_after_eos(response_ids: Tensor, eos_id: int) -> Tensor:
    """1 up to and including the first EOS of each row, 0 after it."""
    is_eos = (response_ids == eos_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos
    return (eos_before == 0).long()


@torch.no_grad()
def sample_responses(model, prompt_ids: Tensor, prompt_mask: Tensor, max_new_tokens: int, eos_id: int,
                     pad_id: int, temperature: float = 1.0,
                     generator: Optional[torch.Generator] = None, return_logprobs: bool = False):
    """Sample up to `max_new_tokens` tokens per prompt. Returns `(response_ids, response_mask)`,
    trimmed to the longest response in the batch, and with `return_logprobs` also the `[B, R]`
    log-probs of the sampled tokens under the untempered policy (masked slots 0): the same numbers
    a forward over prompt + response gives, read off the logits the loop has anyway."""
    was_training = model.training
    model.eval()
    attention = prompt_mask.long()
    out = model(input_ids=prompt_ids, attention_mask=attention, position_ids=shift_positions(attention),
                use_cache=True, logits_to_keep=1)
    cache_kw = cache_keyword(model)
    cache, logits = cache_of(out), out.logits[:, -1]
    next_position = attention.sum(dim=1, keepdim=True)
    finished = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    ones = torch.ones_like(finished, dtype=torch.long).unsqueeze(1)
    tokens, logprobs = [], []
    for step in range(max_new_tokens):
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        if return_logprobs:
            logprobs.append(torch.log_softmax(logits.float(), dim=-1).gather(1, token.unsqueeze(1)).squeeze(1))
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        tokens.append(token)
        finished |= token == eos_id
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        attention = torch.cat([attention, ones], dim=1)
        out = model(input_ids=token.unsqueeze(1), attention_mask=attention, position_ids=next_position,
                    use_cache=True, **{cache_kw: cache})
        cache, logits = cache_of(out), out.logits[:, -1]
        next_position = next_position + 1
    model.train(was_training)
    response_ids = torch.stack(tokens, dim=1)
    response_mask = mask_after_eos(response_ids, eos_id)
    if not return_logprobs:
        return response_ids, response_mask
    return response_ids, response_mask, torch.stack(logprobs, dim=1) * response_mask
