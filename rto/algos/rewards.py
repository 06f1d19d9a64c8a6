"""Per-token rewards ``[B, R]`` for PPO: the axis the project sweeps (docs/METHOD.md).

Notation: response ``y = y_1..y_H`` to prompt ``x``, ``s_h = (x, y_<h)``, ``H`` = last real token
(from the mask: the EOS if generated, else the last token of a truncated response).

- ``beta`` (paper beta_2): KL coefficient; per-token KL ``k_h = log pi(y_h|s_h) - log pi_ref(y_h|s_h)``.
- ``dpo_scale`` (beta_1): weight of the DPO token reward
  ``d_h = log pi_dpo(y_h|s_h) - log pi_ref(y_h|s_h)``.
- ``rm_scale`` (beta_3): weight of the sentence reward-model score ``r_MLE(x, y)`` (``score``, ``[B]``).

Every reward function takes keyword arguments ``score, logprobs, ref_logprobs, mask, beta`` (plus
``kl_kind``); the DPO variants also ``dpo_logprobs, dpo_scale, rm_scale, dpo_clip`` and ``semi``
needs ``segment_end``. ``REWARDS`` registers each variant with the inputs it declares;
``compute_rewards(name, **available)`` passes each variant exactly those. All return ``[B, R]``
with exactly 0 in masked slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rto.algos.masked import as_bool, last_token_index, masked_fill_zero, masked_sum


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kind: str = "k1"
) -> torch.Tensor:
    """Per-token KL estimate between pi and pi_ref on the sampled tokens, ``[B, R]``.

    - ``k1``: ``log pi - log pi_ref`` (unbiased, can be negative; METHOD.md's choice).
    - ``k3``: ``(rho - 1) - log rho`` with ``rho = pi_ref / pi`` (unbiased, always >= 0).
    - ``abs``: ``|log pi - log pi_ref|``.  ``mse``: ``0.5 * (log pi - log pi_ref)^2``.
    """
    log_ratio = masked_fill_zero(logprobs - ref_logprobs, mask)
    if kind == "k1":
        kl = log_ratio
    elif kind == "k3":
        ref_log_ratio = -log_ratio  # log rho = log pi_ref - log pi
        kl = torch.expm1(ref_log_ratio) - ref_log_ratio
    elif kind == "abs":
        kl = log_ratio.abs()
    elif kind == "mse":
        kl = 0.5 * log_ratio.pow(2)
    else:
        raise ValueError(f"unknown kl kind {kind!r}; expected k1, k3, abs or mse")
    return masked_fill_zero(kl, mask)


def clamp_score(score: torch.Tensor, limit: float | None) -> torch.Tensor:
    """Clamp the RM score to ``[-limit, limit]`` (the reference code uses 10); None = no clamp."""
    return score if limit is None else score.clamp(-limit, limit)


def at_last_token(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter ``value`` ``[B]`` to the last real token of each row; 0 elsewhere. ``[B, R]``."""
    out = torch.zeros(mask.shape, dtype=value.dtype, device=value.device)
    return out.scatter(1, last_token_index(mask).unsqueeze(1), value.unsqueeze(1))


def dpo_token_rewards(
    dpo_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    dpo_scale: float,
    dpo_clip: float | None = None,
) -> torch.Tensor:
    """DPO's implicit token reward ``clip(dpo_scale * log pi_dpo/pi_ref, +-dpo_clip)``, ``[B, R]``.

    The clip of each token reward (after scaling: the reference code clips it to +-0.05) is the
    reference code's addition, not the paper's.
    """
    reward = dpo_scale * masked_fill_zero(dpo_logprobs - ref_logprobs, mask)
    return reward if dpo_clip is None else reward.clamp(-dpo_clip, dpo_clip)


def sentence_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kl_kind: str = "k1",
) -> torch.Tensor:
    """Classic PPO reward (METHOD.md "sentence").

    ``r_h = -beta * k_h`` for h < H;  ``r_H = r_MLE(x, y) - beta * k_H``.
    """
    rewards = -beta * kl_penalty(logprobs, ref_logprobs, mask, kl_kind)
    return masked_fill_zero(rewards + at_last_token(score.to(rewards.dtype), mask), mask)


def token_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    dpo_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    dpo_scale: float,
    rm_scale: float,
    dpo_clip: float | None = None,
    kl_kind: str = "k1",
) -> torch.Tensor:
    """RTO's dense reward (paper eq. 4.7).

    ``r_h = beta_1 * log pi_dpo/pi_ref (y_h|s_h) - beta_2 * k_h``  for every h,
    ``    + beta_3 * r_MLE(x, y)`` at h = H.
    """
    rewards = dpo_token_rewards(dpo_logprobs, ref_logprobs, mask, dpo_scale, dpo_clip)
    rewards = rewards - beta * kl_penalty(logprobs, ref_logprobs, mask, kl_kind)
    return masked_fill_zero(rewards + at_last_token(rm_scale * score.to(rewards.dtype), mask), mask)


def delayed_dpo_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    dpo_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    dpo_scale: float,
    rm_scale: float,
    dpo_clip: float | None = None,
    kl_kind: str = "k1",
) -> torch.Tensor:
    """DDPO ablation: the DPO token rewards summed and delayed to the last token.

    ``r_h = -beta_2 * k_h``;  ``r_H += sum_h beta_1 * d_h + beta_3 * r_MLE``. Same episode return
    as ``token_rewards``, no density.
    """
    d = dpo_token_rewards(dpo_logprobs, ref_logprobs, mask, dpo_scale, dpo_clip)
    dpo_total = masked_sum(d, mask, dim=-1)
    rewards = -beta * kl_penalty(logprobs, ref_logprobs, mask, kl_kind)
    terminal = dpo_total.to(rewards.dtype) + rm_scale * score.to(rewards.dtype)
    return masked_fill_zero(rewards + at_last_token(terminal, mask), mask)


def semi_token_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    dpo_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    dpo_scale: float,
    rm_scale: float,
    segment_end: torch.Tensor,
    dpo_clip: float | None = None,
    kl_kind: str = "k1",
) -> torch.Tensor:
    """Semi-RTO ablation: DPO token rewards summed per segment (e.g. sentence), placed at its end.

    ``segment_end`` ``[B, R]`` bool marks the last token of each segment (e.g. a delimiter); the last
    real token always closes a segment, and marks in masked slots are ignored. KL stays per token,
    ``beta_3 * r_MLE`` at H.
    """
    mask = as_bool(mask)
    is_last = at_last_token(torch.ones(mask.shape[0], device=mask.device), mask).bool()
    ends = (as_bool(segment_end) & mask) | is_last
    d = dpo_token_rewards(dpo_logprobs, ref_logprobs, mask, dpo_scale, dpo_clip)
    # Segment id of each token = number of ends strictly before it; scatter-add sums each segment.
    segment_id = ends.long().cumsum(dim=-1) - ends.long()
    segment_sum = torch.zeros_like(d).scatter_add(1, segment_id, d)
    dpo_part = torch.where(ends, segment_sum.gather(1, segment_id), torch.zeros_like(d))
    rewards = dpo_part - beta * kl_penalty(logprobs, ref_logprobs, mask, kl_kind)
    return masked_fill_zero(rewards + at_last_token(rm_scale * score.to(rewards.dtype), mask), mask)


def shaping_dpo_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    dpo_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    dpo_scale: float,
    rm_scale: float,
    dpo_clip: float | None = None,
    kl_kind: str = "k1",
) -> torch.Tensor:
    """RS-PPO ablation: the DPO reward as potential-based shaping (Ng et al. 1999), gamma = 1.

    Potential ``Phi(s_h) = beta_1 * sum_{i<h} d_i`` with ``Phi(terminal) = 0`` gives the shaping
    term ``Phi(s_{h+1}) - Phi(s_h) = beta_1 * d_h`` for h < H and ``-beta_1 * sum_{i<H} d_i`` at H;
    equivalently ``r_h = beta_1 * d_h`` everywhere and ``beta_1 * sum_h d_h`` subtracted at H. The
    DPO part of the episode return telescopes to 0, so the return is ``beta_3 * r_MLE - beta_2 *
    sum_h k_h``, as with the sentence reward (exactly so only for gamma = 1).
    """
    d = dpo_token_rewards(dpo_logprobs, ref_logprobs, mask, dpo_scale, dpo_clip)
    terminal = rm_scale * score.to(d.dtype) - masked_sum(d, mask, dim=-1)
    rewards = d - beta * kl_penalty(logprobs, ref_logprobs, mask, kl_kind)
    return masked_fill_zero(rewards + at_last_token(terminal, mask), mask)


@dataclass(frozen=True)
class RewardVariant:
    """A reward variant and the inputs it reads: the registry says, in one place, what each needs
    (``uses_dpo``: the experience must compute DPO log-probs; a pipeline must provide a DPO model)."""

    fn: Callable[..., torch.Tensor]
    inputs: tuple[str, ...]

    @property
    def uses_dpo(self) -> bool:
        return "dpo_logprobs" in self.inputs


_KL_INPUTS = ("score", "logprobs", "ref_logprobs", "mask", "beta", "kl_kind")
_DPO_INPUTS = _KL_INPUTS + ("dpo_logprobs", "dpo_scale", "rm_scale", "dpo_clip")

REWARDS: dict[str, RewardVariant] = {
    "sentence": RewardVariant(sentence_rewards, _KL_INPUTS),
    "token": RewardVariant(token_rewards, _DPO_INPUTS),
    "ddpo": RewardVariant(delayed_dpo_rewards, _DPO_INPUTS),
    "semi": RewardVariant(semi_token_rewards, _DPO_INPUTS + ("segment_end",)),  # closed at delimiter tokens
    "semi_window": RewardVariant(semi_token_rewards, _DPO_INPUTS + ("segment_end",)),  # fixed token windows
    "shaping": RewardVariant(shaping_dpo_rewards, _DPO_INPUTS),
}
KNOWN_INPUTS = frozenset(key for variant in REWARDS.values() for key in variant.inputs)


def reward_variant(name: str) -> RewardVariant:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; expected one of {sorted(REWARDS)}")
    return REWARDS[name]


def compute_rewards(name: str, **available) -> torch.Tensor:
    """Call the variant ``name`` with the inputs it declares, picked from ``available``: one call
    site serves the whole sweep. A declared input left out takes the function's default (``kl_kind``,
    ``dpo_clip``); a keyword no variant declares is a caller's typo and an error."""
    variant = reward_variant(name)
    unknown = sorted(set(available) - KNOWN_INPUTS)
    if unknown:
        raise TypeError(f"compute_rewards got {unknown}, which no reward variant reads")
    return variant.fn(**{key: available[key] for key in variant.inputs if key in available})
