"""Token log-probabilities and entropies from causal-LM logits.

Layout: a sequence is prompt (left-padded, length P) + response (right-padded, length R); logits
cover the whole sequence ``[B, P+R, V]`` and response token t is predicted by the logits at
position ``P - 1 + t``.
"""

from __future__ import annotations

import torch

from rto.algos.masked import as_bool, masked_fill_zero


def response_logprobs(
    logits: torch.Tensor, response_ids: torch.Tensor, prompt_len: int, mask: torch.Tensor
) -> torch.Tensor:
    """``log pi(y_t | x, y_<t)`` for every response token, ``[B, R]`` float32, masked slots 0.

    The log-softmax runs in float32 (bf16 log-probs are too coarse for PPO ratios). Ids in masked
    slots are never used to index (they may be a pad id, -100 or anything else).
    """
    response_len = response_ids.shape[1]
    if prompt_len < 1:
        raise ValueError("prompt_len must be >= 1: the first response token needs a prompt position")
    if logits.shape[1] < prompt_len - 1 + response_len:
        raise ValueError(
            f"logits cover {logits.shape[1]} positions, need prompt_len - 1 + R = "
            f"{prompt_len - 1 + response_len}"
        )
    mask = as_bool(mask)
    logits = logits[:, prompt_len - 1 : prompt_len - 1 + response_len].float()
    safe_ids = torch.where(mask, response_ids, torch.zeros_like(response_ids))
    token_logits = logits.gather(-1, safe_ids.unsqueeze(-1)).squeeze(-1)
    logprobs = token_logits - torch.logsumexp(logits, dim=-1)
    return masked_fill_zero(logprobs, mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum_v p_v log p_v`` of the categorical at each position, ``logits.shape[:-1]``.

    Computed in float32; vocabulary entries with p = 0 (logit -inf) contribute 0, not NaN.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    return -plogp.sum(dim=-1)


def shift_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: ``cumsum(mask) - 1`` clamped at 0.

    The first real token gets position 0 however much padding precedes it; pad slots get 0.
    """
    return (as_bool(attention_mask).long().cumsum(dim=-1) - 1).clamp(min=0)
