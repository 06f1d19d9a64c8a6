"""From a rollout to a learner's training targets, computed once per rollout (not once per epoch):
old / reference / DPO log-probs, the reward-model score and shaped rewards (every learner), then
PPO's values and GAE, or a critic-free learner's returns-to-go and baseline."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterator, Optional

import torch
from omegaconf import DictConfig
from torch import Tensor

from rto.algos.advantages import RunningMoments, gae, returns_to_go
from rto.algos.finite import check_finite
from rto.algos.masked import SumReduce, masked_whiten
from rto.algos.rewards import clamp_score, compute_rewards, dpo_token_rewards, reward_variant
from rto.models.forward import policy_logprobs
from rto.rl.rollout import Rollout
from rto.rl.segments import Segments


@dataclass
class Experience:
    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor        # log pi_old(y_h|s_h)      [B, R]
    ref_logprobs: Tensor    # log pi_ref(y_h|s_h)      [B, R]
    score: Tensor           # r_MLE(x, y) as used      [B]
    rewards: Tensor         # shaped per-token reward  [B, R]
    advantages: Optional[Tensor] = None  # [B, R]
    returns: Optional[Tensor] = None     # [B, R]: GAE's targets (PPO), returns-to-go (critic-free)
    values: Optional[Tensor] = None      # V_old(s_h) [B, R]; None without a critic
    dpo_rewards: Optional[Tensor] = None  # dpo_scale * log pi_dpo/pi_ref, for logging
    prefix_len: int = 0  # the rollout's (`Rollout.prefix_len`): every slice runs the same path

    def minibatch(self, index: Tensor) -> "Experience":
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        return Experience(**{k: v[index] if isinstance(v, Tensor) else v for k, v in picked.items()})

    def micro_batches(self, size: Optional[int]) -> Iterator["Experience"]:
        """Consecutive slices of at most `size` rows (`ppo.micro_batch_size`); itself when `size` is
        null or not smaller."""
        n = self.response_ids.shape[0]
        if not size or size >= n:
            yield self
            return
        for start in range(0, n, size):
            yield self.minibatch(slice(start, start + size))

    def batch(self) -> dict:
        """The model inputs, with `prefix_len` where the rollout has a shared prefix."""
        return {"prompt_ids": self.prompt_ids, "prompt_mask": self.prompt_mask, "response_ids": self.response_ids,
                "response_mask": self.response_mask, **({"prefix_len": self.prefix_len} if self.prefix_len else {})}


def in_micro_batches(forward: Callable[[dict], Tensor], batch: dict, size: Optional[int]) -> Tensor:
    """`forward(batch)` (a `[B, ...]` tensor) on consecutive slices of at most `size` rows (null: at
    once), concatenated: a frozen model's forward in micro-batches (`ppo.micro_batch_size`)."""
    n = batch["response_ids"].shape[0]
    if not size or size >= n:
        return forward(batch)
    return torch.cat([forward({k: v[i:i + size] if isinstance(v, (Tensor, list)) else v for k, v in batch.items()})
                      for i in range(0, n, size)])


def critic_values(critic, batch: dict, score_moments: Optional[RunningMoments] = None) -> Tensor:
    """The critic's per-token values `[B, R]` on the scale of the rewards: with reward normalisation
    on, its output goes through the same `(x - mean) / std` as the reward-model score. The critic
    starts from the reward model, in raw score units; the reference code normalises the RM and the
    critic with one (fixed) mean and std, here the running statistics the score is normalised with.
    Used by the experience and by the update alike, so old and new values share one scale."""
    values = critic.response_values(**batch)
    return values if score_moments is None else score_moments.normalize(values)


@torch.no_grad()
def score_rollout(rollout: Rollout, *, actor, reference, reward_model, dpo_policy, reward_cfg: DictConfig,
                  beta: float, ppo_cfg: DictConfig, score_moments: Optional[RunningMoments] = None,
                  reduce: SumReduce = None, check: Callable = check_finite, segments: Optional[Segments] = None,
                  kl_in_reward: bool = True, share_prompts: bool = False) -> Experience:
    """What every learner computes once per rollout: old / reference / DPO log-probs, the reward-model
    score and the per-token rewards (`reward=`); no values, advantages or returns yet.

    `reduce` sums over data-parallel ranks: reward normalisation then uses the statistics of the
    global rollout, as one process holding every rank's samples would. `check(name, tensor, mask)`
    runs on every tensor as soon as it exists (default: raise NonFiniteError), so a NaN is named where
    it first appears and never enters the running reward statistics. `segments(response_ids, mask)`
    marks Semi-RTO's segment ends. `kl_in_reward=False` leaves the KL penalty out of the rewards (a
    learner that puts it in its loss instead). `share_prompts`: the rollout holds k samples per
    prompt, and every model runs each prompt once (the same numbers, less work).

    Every model reads the rollout at the sampling temperature (`ppo_cfg.temperature`): pi_old, the
    reference and the DPO model alike, so the KL term and the DPO reward compare the distributions
    the tokens were drawn from."""
    batch = {"prompt_ids": rollout.prompt_ids, "prompt_mask": rollout.prompt_mask,
             "response_ids": rollout.response_ids, "response_mask": rollout.response_mask,
             "prefix_len": rollout.prefix_len}
    mask = rollout.response_mask
    size = ppo_cfg.get("micro_batch_size")

    def read(model) -> Tensor:  # log-probs only: the logits of a micro-batch are dropped as it ends
        return in_micro_batches(lambda b: policy_logprobs(model, b, temperature=ppo_cfg.temperature,
                                                          share_repeated=share_prompts)[0], batch, size)
    # pi_old: the sampler's log-probs where they equal a full forward's (fp32), else one full forward
    logprobs = rollout.logprobs
    if logprobs is None:
        logprobs = read(actor)
    check("logprobs", logprobs, mask)
    ref_logprobs = read(reference)
    check("ref_logprobs", ref_logprobs, mask)
    # a RewardScorer (re-tokenizes if needed), each prompt once where the rollout repeats them, the
    # shared prefix once; a stand-in scorer is passed only the keywords it is asked to honour
    sharing = {"share_repeated": True} if share_prompts else {}
    if rollout.prefix_len:
        sharing["prefix_len"] = rollout.prefix_len
    tensors = {k: v for k, v in batch.items() if k != "prefix_len"}
    score = in_micro_batches(lambda b: reward_model.score(**b, **sharing),
                             {**tensors, "prompt_text": rollout.prompt_text}, size)
    check("score", score)
    if score_moments is not None:
        score_moments.update(score, reduce=reduce)
        score = score_moments.normalize(score)
    score = clamp_score(score, reward_cfg.score_clip)  # after normalising: the clamp is in normalised units

    dpo_logprobs = dpo_rewards = None
    if reward_variant(reward_cfg.name).uses_dpo:
        dpo_logprobs = read(dpo_policy)
        check("dpo_logprobs", dpo_logprobs, mask)
        dpo_rewards = dpo_token_rewards(dpo_logprobs, ref_logprobs, mask, reward_cfg.dpo_scale, reward_cfg.dpo_clip)
    segment_end = None if segments is None else segments(rollout.response_ids, mask)
    rewards = compute_rewards(
        reward_cfg.name, score=score, logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask,
        beta=beta if kl_in_reward else 0.0, kl_kind=ppo_cfg.kl_estimator, dpo_logprobs=dpo_logprobs,
        dpo_scale=reward_cfg.dpo_scale, rm_scale=reward_cfg.rm_scale, dpo_clip=reward_cfg.dpo_clip,
        segment_end=segment_end)
    check("rewards", rewards, mask)
    return Experience(prompt_ids=rollout.prompt_ids, prompt_mask=rollout.prompt_mask,
                      response_ids=rollout.response_ids, response_mask=mask, logprobs=logprobs,
                      ref_logprobs=ref_logprobs, score=score, rewards=rewards, dpo_rewards=dpo_rewards,
                      prefix_len=rollout.prefix_len)


@torch.no_grad()
def make_experience(rollout: Rollout, *, critic, ppo_cfg: DictConfig, score_moments: Optional[RunningMoments] = None,
                    reduce: SumReduce = None, check: Callable = check_finite, **scoring) -> Experience:
    """PPO's experience: `score_rollout`, then the critic's values (on the scale of the rewards, with
    the running statistics that now include this rollout), GAE and advantage whitening over the
    global rollout (`reduce`)."""
    exp = score_rollout(rollout, ppo_cfg=ppo_cfg, score_moments=score_moments, reduce=reduce, check=check, **scoring)
    mask = exp.response_mask
    exp.values = in_micro_batches(lambda b: critic_values(critic, b, score_moments), exp.batch(),
                                  ppo_cfg.get("micro_batch_size"))
    check("values", exp.values, mask)
    advantages, exp.returns = gae(exp.rewards, exp.values, mask, ppo_cfg.gamma, ppo_cfg.lam)
    if ppo_cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask, reduce=reduce)
    exp.advantages = advantages
    check("advantages", exp.advantages, mask)
    check("returns", exp.returns, mask)
    return exp


@torch.no_grad()
def make_critic_free_experience(rollout: Rollout, *, baseline: Callable[[Tensor, Tensor], Tensor], whiten: bool,
                                ppo_cfg: DictConfig, reduce: SumReduce = None, check: Callable = check_finite,
                                **scoring) -> Experience:
    """A critic-free learner's experience: `score_rollout`, the returns-to-go of the per-token rewards
    (`ppo.gamma`), the learner's baseline `baseline(returns, mask)` (rto/algos/advantages.py; a group
    baseline reads the prompt's k consecutive samples, all on this rank) and, with `whiten`, whitening
    over the global rollout (`reduce`)."""
    exp = score_rollout(rollout, ppo_cfg=ppo_cfg, reduce=reduce, check=check, **scoring)
    mask = exp.response_mask
    exp.returns = returns_to_go(exp.rewards, mask, ppo_cfg.gamma)
    advantages = baseline(exp.returns, mask)
    exp.advantages = masked_whiten(advantages, mask, reduce=reduce) if whiten else advantages
    check("advantages", exp.advantages, mask)
    return exp
