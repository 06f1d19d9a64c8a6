"""What PPO logs about each rollout (scores, KL, lengths, the critic's fit, gold reward)."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from rto.algos.losses import explained_variance
from rto.algos.masked import masked_mean, masked_sum
from rto.algos.rewards import kl_penalty
from rto.rl.experience import Experience
from rto.rl.rollout import Rollout


@torch.no_grad()
def rollout_metrics(rollout: Rollout, exp: Experience, eos_id: int, decode: Optional[Callable],
                    gold: Optional[Callable]) -> dict[str, float]:
    mask = exp.response_mask
    metrics = {
        "ppo/score": float(exp.score.mean()),
        "ppo/reward_total": float(masked_sum(exp.rewards, mask, dim=1).mean()),
        "ppo/kl_k1": float(masked_sum(kl_penalty(exp.logprobs, exp.ref_logprobs, mask, "k1"), mask, dim=1).mean()),
        "ppo/kl_k3": float(masked_sum(kl_penalty(exp.logprobs, exp.ref_logprobs, mask, "k3"), mask, dim=1).mean()),
        "ppo/response_length": float(mask.sum(1).float().mean()),
        "ppo/eos_rate": float((exp.response_ids == eos_id).logical_and(mask.bool()).any(1).float().mean()),
        "ppo/explained_variance": float(explained_variance(exp.values, exp.returns, mask)),
        "ppo/advantage_mean": float(masked_mean(exp.advantages, mask)),
    }
    if exp.dpo_rewards is not None:
        metrics["ppo/dpo_reward"] = float(masked_sum(exp.dpo_rewards, mask, dim=1).mean())
    if gold is not None and rollout.prompt_text:
        responses = decode(rollout.response_ids, rollout.response_mask)
        metrics["ppo/gold_reward"] = float(np.mean(gold(rollout.prompt_text, responses)))
    return metrics
