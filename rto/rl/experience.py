"""From a rollout to PPO's training targets, computed once per rollout (not once per PPO epoch):
old / reference / DPO log-probs, values, the reward-model score, shaped rewards, GAE."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Optional

import torch
from omegaconf import DictConfig
from torch import Tensor

from rto.algos.advantages import RunningMoments, gae
from rto.algos.finite import check_finite
from rto.algos.masked import SumReduce, masked_whiten
from rto.algos.rewards import clamp_score, compute_rewards, dpo_token_rewards, reward_variant
from rto.models.forward import policy_logprobs
from rto.rl.rollout import Rollout


@dataclass
class Experience:
    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor        # log pi_old(y_h|s_h)      [B, R]
    ref_logprobs: Tensor    # log pi_ref(y_h|s_h)      [B, R]
    values: Tensor          # V_old(s_h)               [B, R]
    score: Tensor           # r_MLE(x, y) as used      [B]
    rewards: Tensor         # shaped per-token reward  [B, R]
    advantages: Tensor      # [B, R]
    returns: Tensor         # [B, R]
    dpo_rewards: Optional[Tensor] = None  # dpo_scale * log pi_dpo/pi_ref, for logging

    def minibatch(self, index: Tensor) -> "Experience":
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        return Experience(**{k: None if v is None else v[index] for k, v in picked.items()})

    def batch(self) -> dict[str, Tensor]:
        return {"prompt_ids": self.prompt_ids, "prompt_mask": self.prompt_mask,
                "response_ids": self.response_ids, "response_mask": self.response_mask}


def segment_ends(mask: Tensor, segment_len: int) -> Tensor:
    """Semi-RTO's segment boundaries: every `segment_len`-th real token (the last is added by the reward)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return ((positions + 1) % segment_len == 0) & mask.bool()


@torch.no_grad()
def make_experience(rollout: Rollout, *, actor, critic, reference, reward_model, dpo_policy,
                    reward_cfg: DictConfig, beta: float, ppo_cfg: DictConfig,
                    score_moments: Optional[RunningMoments] = None, reduce: SumReduce = None,
                    check: Callable = check_finite) -> Experience:
    """`reduce` sums over data-parallel ranks: reward normalisation and advantage whitening then use
    the statistics of the global rollout, as one process holding every rank's samples would.
    `check(name, tensor, mask)` runs on every tensor as soon as it exists (default: raise
    NonFiniteError), so a NaN is named where it first appears and never enters the running
    reward statistics."""
    batch = {"prompt_ids": rollout.prompt_ids, "prompt_mask": rollout.prompt_mask,
             "response_ids": rollout.response_ids, "response_mask": rollout.response_mask}
    mask = rollout.response_mask
    # pi_old's log-probs come with the rollout when the sampler kept them (one forward fewer)
    logprobs = rollout.logprobs if rollout.logprobs is not None else policy_logprobs(actor, batch)[0]
    check("logprobs", logprobs, mask)
    ref_logprobs, _ = policy_logprobs(reference, batch)
    check("ref_logprobs", ref_logprobs, mask)
    values = critic.response_values(**batch)
    check("values", values, mask)
    score = reward_model.score(**batch, prompt_text=rollout.prompt_text)  # a RewardScorer: re-tokenizes if needed
    check("score", score)
    if score_moments is not None:
        score_moments.update(score, reduce=reduce)
        score = score_moments.normalize(score)
    score = clamp_score(score, reward_cfg.score_clip)

    dpo_logprobs = dpo_rewards = None
    if reward_variant(reward_cfg.name).uses_dpo:
        dpo_logprobs, _ = policy_logprobs(dpo_policy, batch)
        check("dpo_logprobs", dpo_logprobs, mask)
        dpo_rewards = dpo_token_rewards(dpo_logprobs, ref_logprobs, mask, reward_cfg.dpo_scale, reward_cfg.dpo_clip)
    rewards = compute_rewards(
        reward_cfg.name, score=score, logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask, beta=beta,
        kl_kind=ppo_cfg.kl_estimator, dpo_logprobs=dpo_logprobs, dpo_scale=reward_cfg.dpo_scale,
        rm_scale=reward_cfg.rm_scale, dpo_clip=reward_cfg.dpo_clip,
        segment_end=segment_ends(mask, reward_cfg.get("segment_len", 1)))
    check("rewards", rewards, mask)
    advantages, returns = gae(rewards, values, mask, ppo_cfg.gamma, ppo_cfg.lam)
    if ppo_cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask, reduce=reduce)
    check("advantages", advantages, mask)
    check("returns", returns, mask)
    return Experience(prompt_ids=rollout.prompt_ids, prompt_mask=rollout.prompt_mask,
                      response_ids=rollout.response_ids, response_mask=mask, logprobs=logprobs,
                      ref_logprobs=ref_logprobs, values=values, score=score, rewards=rewards,
                      advantages=advantages, returns=returns, dpo_rewards=dpo_rewards)
