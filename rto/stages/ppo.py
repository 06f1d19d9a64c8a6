"""PPO with a sentence or token reward (`algo=ppo`, the default): the shared RL loop
(`rto/stages/learner.py`) plus a critic, trained alongside the actor with its own optimizer.

The experience adds the critic's values (on the rewards' scale: normalised with the running score
statistics), GAE and advantage whitening over the global rollout; the update adds the clipped value
loss (`ppo.value_loss_coef`) to the policy loss.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from rto.algos.losses import value_loss
from rto.models.scalar_head import ScalarHeadModel
from rto.rl.experience import Experience, critic_values, make_experience
from rto.rl.rollout import Rollout
from rto.stages.learner import Losses, RLModule


class PPOModule(RLModule):
    def __init__(self, actor, critic: ScalarHeadModel, reference, reward_model, dpo_policy, *,
                 actor_optimizer: Callable, critic_optimizer: Callable, **shared):
        super().__init__(actor, reference, reward_model, dpo_policy, **shared)
        self.critic = critic
        self.optimizer_factories = (actor_optimizer, critic_optimizer)

    def configure_optimizers(self):
        actor_optimizer, critic_optimizer = self.optimizer_factories
        return [actor_optimizer(self.actor.parameters()), critic_optimizer(self.critic.parameters())]

    def trained(self):
        return [self.actor, self.critic]

    def experience(self, rollout: Rollout, beta: float, iteration: int) -> Experience:
        return make_experience(
            rollout, actor=self.actor, critic=self.critic, reference=self.reference,
            reward_model=self.reward_model, dpo_policy=self.dpo_policy, reward_cfg=self.reward_cfg,
            beta=beta, ppo_cfg=self.ppo_cfg, score_moments=self.score_moments, reduce=self.sum_over_ranks,
            check=partial(self.check_on_all_ranks, step=iteration), segments=self.segments,
            kl_in_reward=self.kl_in_reward, share_prompts=self.samples_per_prompt > 1)

    def extra_losses(self, mb: Experience) -> tuple[Losses, dict]:
        values = critic_values(self.critic, mb.batch(), self.score_moments)
        loss, stats = value_loss(values, mb.values, mb.returns, mb.response_mask, self.ppo_cfg.value_clip_range)
        return {"value_loss": (loss, self.ppo_cfg.value_loss_coef)}, stats
