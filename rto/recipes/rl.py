"""RL from pi_ref (the actor starts from SFT, not DPO) with the configured reward variant
(`reward=`), and the learner that optimises it, picked from `LEARNERS`.

A learner is the Lightning module that turns rollouts into updates; every learner gets the same
frozen models (reference, reward model, DPO model where the reward variant reads it) and the same
prompts. Adding one means one entry in `LEARNERS` (and a config group for its options).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import Subset

from rto.algos.rewards import reward_variant
from rto.data import PromptCollator
from rto.models import load_policy
from rto.models.critic import save_critic
from rto.models.reward import new_critic
from rto.recipes.base import StageRecipe, Upstream
from rto.rl.validation import ValidationCurve
from rto.stages import PPOModule


def ppo_module(ctx, upstream: Upstream, actor, critic) -> PPOModule:
    cfg, tok = ctx.cfg.ppo, ctx.data.tokenizer
    uses_dpo = reward_variant(ctx.cfg.reward.name).uses_dpo
    return PPOModule(
        actor, critic, upstream["sft"], ctx.scorer(upstream["rm"]), upstream["dpo"] if uses_dpo else None,
        ppo_cfg=cfg, reward_cfg=ctx.cfg.reward, beta=ctx.cfg.beta,
        actor_optimizer=instantiate(cfg.actor_optimizer), critic_optimizer=instantiate(cfg.critic_optimizer),
        eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, decode=ctx.decode, gold=ctx.data.gold,
        seed=ctx.cfg.seed, segments=ctx.segments)


@dataclass(frozen=True)
class Learner:
    module: Callable  # (ctx, upstream, actor, critic) -> the Lightning module that trains the actor
    uses_critic: bool = True


LEARNERS: dict[str, Learner] = {"ppo": Learner(ppo_module)}


def validation_curve(ctx) -> tuple:
    """The sample-efficiency curve on the first `ppo.val_prompts` validation prompts (none if `ppo.val_every`
    is null), sampled as the final evaluation samples."""
    cfg = ctx.cfg.ppo
    if not cfg.val_every:
        return ()
    return (ValidationCurve(
        ctx.data.val_prompts[:cfg.val_prompts], ctx.data.encoder, ctx.decode, ctx.data.gold,
        optimum=ctx.data.optimum, every=cfg.val_every,
        iterations=cfg.iterations, responses_per_rank=cfg.rollout_batch_size,
        batch_size=ctx.cfg.eval.batch_size, max_new_tokens=ctx.cfg.eval.max_new_tokens,
        temperature=ctx.cfg.eval.temperature, seed=ctx.cfg.eval.seed),)


def learner_name(cfg) -> str:
    return OmegaConf.select(cfg, "algo.name", default="ppo")


class RLRecipe(StageRecipe):
    name = "ppo"
    config_keys = ("seed", "model", "data", "sft", "rm", "dpo", "ppo", "reward", "beta")
    seed_offset = 3
    resume_every = 1  # a PPO iteration is worth a checkpoint

    def needs(self, cfg):
        return ("sft", "rm") + (("dpo",) if reward_variant(cfg.reward.name).uses_dpo else ())

    def train(self, ctx, upstream):
        cfg = ctx.cfg.ppo
        learner = LEARNERS[learner_name(ctx.cfg)]
        actor = load_policy(upstream.path("sft"), ctx.cfg.model)  # RL starts from SFT, not DPO
        critic = new_critic(ctx.cfg.reward_model, ctx.cfg.model, upstream.path("rm"), upstream.path("sft"),
                            ctx.data.tokenizer, ctx.rm_tokenizer) if learner.uses_critic else None
        module = learner.module(ctx, upstream, actor, critic)

        def prompts():
            # prompts drawn with replacement for the global batch (rollout_batch_size per rank), dealt
            # to the ranks: an iteration's rank batches are together the batch one process would draw
            draws = cfg.iterations * cfg.rollout_batch_size * ctx.last_trainer.world_size
            order = torch.randint(len(ctx.data.train_prompts), (draws,),
                                  generator=torch.Generator().manual_seed(ctx.cfg.seed))
            return ctx.training_loader(Subset(ctx.data.train_prompts, order.tolist()),
                                       PromptCollator(ctx.data.encoder), cfg.rollout_batch_size, shuffle=False), None
        # every iteration is expensive and worth a log line
        ctx.fit(self, module, prompts, callbacks=validation_curve(ctx), max_epochs=1, log_every_n_steps=1)
        if critic is not None and ctx.is_global_zero:
            # the final critic and reward statistics beside the actor (`<run>/checkpoints/critic`), for
            # analysis (`python -m rto.tokens`); RL never reads it back
            save_critic(ctx.ckpt_dir / "critic", critic, ctx.data.tokenizer, getattr(module, "score_moments", None),
                        ctx.config_hash(self.config_keys))
        return actor
