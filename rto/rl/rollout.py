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

from rto.algos.finite import NonFiniteError
from rto.algos.logprobs import shift_positions
from rto.models.forward import cache_keyword, cache_of, per_row, repeated_prompt_rows, shared_prompt_cache


@dataclass
class Rollout:
    prompt_ids: Tensor      # [B, P] left-padded
    prompt_mask: Tensor     # [B, P]
    response_ids: Tensor    # [B, R] right-padded
    response_mask: Tensor   # [B, R] 1 on real tokens, the first EOS included
    prompt_text: list[str] = field(default_factory=list)
    # log pi_T(y_t) of the sampled tokens under the tempered sampling distribution (masked slots 0),
    # kept only where they equal a full forward's (`sampler_logprobs_are_exact`): saves PPO a forward
    logprobs: Optional[Tensor] = None
    # the prompts' shared first tokens (`common_prefix_length`), fixed here for every forward of the
    # iteration: each runs them once, and pi_old and the update's minibatches take the same path
    prefix_len: int = 0


def repeat_prompts(batch: dict, k: int) -> tuple[Tensor, Tensor, list[str]]:
    """`(prompt_ids, prompt_mask, prompt_text)` with every prompt repeated k times in a row: a
    prompt's k samples form a group of consecutive rows (what a group baseline reads)."""
    texts = [text for text in batch.get("prompt_text", []) for _ in range(k)]
    if k == 1:
        return batch["prompt_ids"], batch["prompt_mask"], texts
    return batch["prompt_ids"].repeat_interleave(k, dim=0), batch["prompt_mask"].repeat_interleave(k, dim=0), texts


def mask_after_eos(response_ids: Tensor, eos_id: int) -> Tensor:
    """1 up to and including the first EOS of each row, 0 after it."""
    is_eos = (response_ids == eos_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos
    return (eos_before == 0).long()


def sampler_logprobs_are_exact(model) -> bool:
    """Whether the sampler's KV-cache log-probs can stand in for pi_old: only when every weight is
    fp32, no autocast is active and fp32 matmuls are not lowered (TF32). Otherwise (bf16 weights,
    `bf16-mixed`, ...) one-token decoding steps and a full forward round differently (about 1e-3 on
    a tiny model in bf16), pi_old != pi at the first minibatch, and PPO recomputes pi_old with one
    full forward in the update's precision, as OpenRLHF does."""
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if any(p.dtype != torch.float32 for p in params) or torch.is_autocast_enabled(device.type):
        return False
    return device.type != "cuda" or torch.get_float32_matmul_precision() == "highest"


def draw_tokens(logprobs: Tensor, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """One token per row of the distribution `exp(logprobs)` `[B, V]`, by inverting its cumulative
    distribution with one uniform number per row; returns `(tokens [B], each row's total probability
    [B])` (not finite where the row was not a distribution). `torch.multinomial` draws one
    exponential number per vocabulary entry instead: 22 ms a step for 16 rows of SmolLM2's 49152 tokens
    on 2 CPU cores, against 1.6-7 ms here (benchmarks/token_draw.py). The sum runs in float64 (float32
    on MPS, which has none) so that a large vocabulary's tail keeps its mass."""
    dtype = torch.float32 if logprobs.device.type == "mps" else torch.float64
    cdf = logprobs.exp().cumsum(dim=-1, dtype=dtype)  # probabilities as given, summed in dtype
    total = cdf[:, -1:]
    u = torch.rand(total.shape, dtype=dtype, device=cdf.device, generator=generator)
    # u <= 1 - 2**-53, so u * total rounds to below the total (round to nearest; checked on 1e6 totals):
    # the first token whose cumulative probability exceeds it has a probability > 0 (`right=True` skips empty ones)
    tokens = torch.searchsorted(cdf, u * total, right=True).squeeze(1)
    return tokens.clamp_(max=cdf.shape[1] - 1), total.squeeze(1)  # clamp: a NaN row (raised on by the caller)


@torch.no_grad()
def sample_responses(model, prompt_ids: Tensor, prompt_mask: Tensor, max_new_tokens: int, eos_id: int,
                     pad_id: int, temperature: float = 1.0,
                     generator: Optional[torch.Generator] = None, return_logprobs: bool = False,
                     share_repeated: bool = False, prefix_len: int = 0):
    """Sample up to `max_new_tokens` tokens per prompt from `softmax(logits / temperature)`, in eval
    mode (dropout off). Returns `(response_ids, response_mask)`, trimmed to the longest response in
    the batch, and with `return_logprobs` also the `[B, R]` log-probs of the sampled tokens under
    that same tempered distribution (masked slots 0), read off the logits the loop has anyway: the
    numbers `policy_logprobs(..., temperature=temperature)` gives, in full fp32 (see
    `sampler_logprobs_are_exact`). `share_repeated`: where prompts repeat (k samples per prompt), each
    prompt's forward runs once and its keys and values are copied to its rows (the same numbers up to
    float rounding, as `policy_logprobs(share_repeated=True)`). `prefix_len`: the prompts' shared first
    tokens run once (`rto.models.forward.common_prefix_length`)."""
    was_training = model.training
    model.eval()
    attention = prompt_mask.long()
    rows = repeated_prompt_rows({"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}) if share_repeated else None
    shared = None
    if rows is not None or prefix_len:
        shared = shared_prompt_cache(model, prompt_ids, prompt_mask, rows, logits=True, prefix_len=prefix_len)
    if shared is not None:
        out, cache, attention = shared  # the cache's columns: with a prefix, not the prompts' own layout
        logits = per_row(out.logits[:, -1], rows)
    else:
        out = model(input_ids=prompt_ids, attention_mask=attention, position_ids=shift_positions(attention),
                    use_cache=True, logits_to_keep=1)
        cache, logits = cache_of(out), out.logits[:, -1]
    cache_kw = cache_keyword(model)
    next_position = prompt_mask.long().sum(dim=1, keepdim=True)  # real prompt tokens, whatever the layout
    finished = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    ones = torch.ones_like(finished, dtype=torch.long).unsqueeze(1)
    tokens, logprobs, totals, drawing = [], [], [], []
    for step in range(max_new_tokens):
        step_logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
        token, total = draw_tokens(step_logprobs, generator)
        totals.append(total)
        drawing.append(~finished)  # a finished row's draws are unused (its slots become pads)
        if return_logprobs:  # the log of the probability the token was drawn with
            logprobs.append(step_logprobs.gather(1, token.unsqueeze(1)).squeeze(1))
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
    # a NaN or Inf logit makes its row's total probability NaN or Inf (checked once, not at every step)
    drawing = torch.stack(drawing, dim=1)
    bad = ~torch.isfinite(torch.stack(totals, dim=1)) & drawing
    if bool(bad.any()):
        raise NonFiniteError("the policy's sampling distribution", count=int(bad.sum()), total=int(drawing.sum()))
    response_ids = torch.stack(tokens, dim=1)
    response_mask = mask_after_eos(response_ids, eos_id)
    if not return_logprobs:
        return response_ids, response_mask
    # where, not a product: a finished row's later distributions may be NaN (not drawn from, not checked)
    return response_ids, response_mask, torch.where(response_mask.bool(), torch.stack(logprobs, dim=1), 0.0)
