"""The critic-free learners (`algo=reinforce_pp|rloo|grpo`): the shared RL loop
(`rto/stages/learner.py`) with no critic (none is built, trained or checkpointed) and one optimizer.

Each learner differs only in its baseline, a pure function of the returns-to-go
(`rto/algos/advantages.py`): REINFORCE++ none (then global whitening), RLOO the mean of the prompt's
other samples, GRPO the group's mean and std. Where the KL to the reference goes (`algo.kl_in`:
reward or loss) is the shared loop's business.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from torch import Tensor

from rto.rl.experience import Experience, make_critic_free_experience
from rto.rl.rollout import Rollout
from rto.stages.learner import RLModule

Baseline = Callable[[Tensor, Tensor], Tensor]  # (returns-to-go [B, R], mask) -> advantages [B, R]


class CriticFreeModule(RLModule):
    def __init__(self, actor, reference, reward_model, dpo_policy, *, baseline: Baseline, whiten: bool,
                 actor_optimizer: Callable, **shared):
        super().__init__(actor, reference, reward_model, dpo_policy, **shared)
        self.baseline, self.whiten = baseline, whiten
        self.optimizer_factory = actor_optimizer

    def configure_optimizers(self):
        return self.optimizer_factory(self.actor.parameters())

    def experience(self, rollout: Rollout, beta: float, iteration: int) -> Experience:
        return make_critic_free_experience(
            rollout, baseline=self.baseline, whiten=self.whiten, actor=self.actor, reference=self.reference,
            reward_model=self.reward_model, dpo_policy=self.dpo_policy, reward_cfg=self.reward_cfg, beta=beta,
            ppo_cfg=self.ppo_cfg, score_moments=self.score_moments, reduce=self.sum_over_ranks,
            check=partial(self.check_on_all_ranks, step=iteration), segments=self.segments,
            kl_in_reward=self.kl_in_reward, share_prompts=self.samples_per_prompt > 1)
