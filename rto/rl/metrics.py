"""What the RL stage logs each iteration (under `ppo/`, whatever the learner): scores, KL, lengths,
the critic's fit (PPO), gold reward, the KL coefficient, speed."""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch

from rto.algos.losses import explained_variance
from rto.algos.masked import masked_mean, masked_sum
from rto.algos.rewards import kl_penalty
from rto.rl.experience import Experience
from rto.rl.rollout import Rollout


def mean_response_kl(exp: Experience) -> float:
    """The rollout's mean per-response KL estimate, `sum_h log pi - log pi_ref` (k1), what the
    adaptive KL controller compares with its target."""
    mask = exp.response_mask
    return float(masked_sum(kl_penalty(exp.logprobs, exp.ref_logprobs, mask, "k1"), mask, dim=1).mean())


@torch.no_grad()
def rollout_metrics(rollout: Rollout, exp: Experience, eos_id: int, decode: Optional[Callable],
                    gold: Optional[Callable]) -> dict[str, float]:
    mask = exp.response_mask
    metrics = {
        "ppo/score": float(exp.score.mean()),
        "ppo/reward_total": float(masked_sum(exp.rewards, mask, dim=1).mean()),
        "ppo/kl_k1": mean_response_kl(exp),
        "ppo/kl_k3": float(masked_sum(kl_penalty(exp.logprobs, exp.ref_logprobs, mask, "k3"), mask, dim=1).mean()),
        "ppo/response_length": float(mask.sum(1).float().mean()),
        "ppo/eos_rate": float((exp.response_ids == eos_id).logical_and(mask.bool()).any(1).float().mean()),
        "ppo/advantage_mean": float(masked_mean(exp.advantages, mask)),
    }
    if exp.values is not None:  # a learner with a critic
        metrics["ppo/explained_variance"] = float(explained_variance(exp.values, exp.returns, mask))
    if exp.dpo_rewards is not None:
        metrics["ppo/dpo_reward"] = float(masked_sum(exp.dpo_rewards, mask, dim=1).mean())
    if gold is not None and rollout.prompt_text:
        responses = decode(rollout.response_ids, rollout.response_mask)
        metrics["ppo/gold_reward"] = float(np.mean(gold(rollout.prompt_text, responses)))
    return metrics


def iteration_metrics(module, rollout: Rollout, exp: Experience, iteration: int, beta: float, start: float,
                      rollout_seconds: float, sampling_seconds: float) -> dict[str, float]:
    """`rollout_metrics` plus the iteration's bookkeeping: the KL coefficient it used, timings."""
    metrics = rollout_metrics(rollout, exp, module.eos_id, module.decode, module.gold)
    if getattr(module.reward_model, "retokenize", False):  # responses cut at the reward model's limit
        metrics["ppo/rm_truncated"] = module.reward_model.last_truncated / rollout.response_ids.shape[0]
    metrics["ppo/iteration"] = float(iteration)
    metrics["ppo/kl_coef"] = float(beta)
    metrics["ppo/rollout_seconds"] = rollout_seconds
    metrics["ppo/rollout_tokens_per_second"] = float(rollout.response_mask.sum()) / sampling_seconds
    metrics["ppo/samples_per_second"] = rollout.response_ids.shape[0] / (time.perf_counter() - start)
    return metrics
