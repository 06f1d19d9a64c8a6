"""RL from pi_ref (the actor starts from SFT, not DPO) with the configured reward variant
(`reward=`), and the learner that optimises it (`algo=`), picked from `LEARNERS`.

A learner is the Lightning module that turns rollouts into updates; every learner gets the same
frozen models (reference, reward model, DPO model where the reward variant reads it), the same
prompts, the same budget of sampled responses per iteration (`ppo.rollout_batch_size` per rank:
`algo.samples_per_prompt` responses to each of rollout_batch_size / k prompts) and the same KL
coefficient `beta_t` (`kl_ctl=`). Adding one means one entry in `LEARNERS` and a `conf/algo/` file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset

from rto.algos.advantages import grpo_advantages, no_baseline, rloo_advantages
from rto.algos.kl_control import KLController
from rto.algos.rewards import reward_variant
from rto.data import PromptCollator
from rto.models import load_policy
from rto.models.critic import save_critic
from rto.models.reward import new_critic
from rto.recipes.base import StageRecipe, Upstream
from rto.rl.validation import ValidationCurve
from rto.stages import CriticFreeModule, PPOModule


def shared_options(ctx, upstream: Upstream) -> dict:
    """What every learner's module takes: the frozen models, the configs, beta_t, k, the KL's place."""
    cfg, algo, tok = ctx.cfg, ctx.cfg.algo, ctx.data.tokenizer
    uses_dpo = reward_variant(cfg.reward.name).uses_dpo
    kl = cfg.kl_ctl
    return dict(
        reference=upstream["sft"], reward_model=ctx.scorer(upstream["rm"]),
        dpo_policy=upstream["dpo"] if uses_dpo else None, ppo_cfg=cfg.ppo, reward_cfg=cfg.reward, beta=cfg.beta,
        kl_ctl=KLController(cfg.beta, kl.name, kl.get("target"), kl.get("horizon")),
        samples_per_prompt=algo.samples_per_prompt, kl_in_reward=algo.kl_in == "reward",
        eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, decode=ctx.decode, gold=ctx.data.gold,
        seed=cfg.seed, segments=ctx.segments)


def ppo_module(ctx, upstream: Upstream, actor, critic) -> PPOModule:
    cfg = ctx.cfg.ppo
    return PPOModule(actor, critic, actor_optimizer=instantiate(cfg.actor_optimizer),
                     critic_optimizer=instantiate(cfg.critic_optimizer), **shared_options(ctx, upstream))


def critic_free_module(ctx, upstream: Upstream, actor, critic) -> CriticFreeModule:
    algo = ctx.cfg.algo
    return CriticFreeModule(actor, baseline=LEARNERS[algo.name].baseline(algo), whiten=algo.whiten_advantages,
                            actor_optimizer=instantiate(ctx.cfg.ppo.actor_optimizer), **shared_options(ctx, upstream))


@dataclass(frozen=True)
class Learner:
    module: Callable  # (ctx, upstream, actor, critic) -> the Lightning module that trains the actor
    uses_critic: bool = True
    label: str = ""   # how tables name its policy: "<label> (<reward>)"
    min_samples_per_prompt: int = 1
    # a critic-free learner's baseline, bound to its options: algo_cfg -> (returns-to-go, mask) -> advantages
    baseline: Optional[Callable[[DictConfig], Callable]] = None


LEARNERS: dict[str, Learner] = {
    "ppo": Learner(ppo_module, label="PPO"),
    "reinforce_pp": Learner(critic_free_module, uses_critic=False, label="REINFORCE++",
                            baseline=lambda algo: no_baseline),
    "rloo": Learner(critic_free_module, uses_critic=False, label="RLOO", min_samples_per_prompt=2,
                    baseline=lambda algo: partial(rloo_advantages, group_size=algo.samples_per_prompt,
                                                  baseline=algo.group_baseline)),
    "grpo": Learner(critic_free_module, uses_critic=False, label="GRPO", min_samples_per_prompt=2,
                    baseline=lambda algo: partial(grpo_advantages, group_size=algo.samples_per_prompt,
                                                  baseline=algo.group_baseline, scale=algo.scale_by_std)),
}


def learner_name(cfg) -> str:
    return OmegaConf.select(cfg, "algo.name", default="ppo")


def samples_per_prompt(cfg) -> int:
    return int(OmegaConf.select(cfg, "algo.samples_per_prompt", default=1))


def validation_curve(ctx) -> tuple:
    """The sample-efficiency curve on the first `ppo.val_prompts` validation prompts (none if `ppo.val_every`
    is null), sampled as the final evaluation samples, against the responses the learner sampled."""
    cfg = ctx.cfg.ppo
    if not cfg.val_every:
        return ()
    return (ValidationCurve(
        ctx.data.val_prompts[:cfg.val_prompts], ctx.data.encoder, ctx.decode, ctx.data.gold,
        optimum=ctx.data.optimum, every=cfg.val_every,
        iterations=cfg.iterations, responses_per_rank=cfg.rollout_batch_size,  # k x prompts: the sampled responses
        batch_size=ctx.cfg.eval.batch_size, max_new_tokens=ctx.cfg.eval.max_new_tokens,
        temperature=ctx.cfg.eval.temperature, seed=ctx.cfg.eval.seed,
        micro_batch_size=ctx.cfg.eval.get("micro_batch_size")),)


class RLRecipe(StageRecipe):
    name = "ppo"
    config_keys = ("seed", "model", "data", "sft", "pairs", "rm", "reward_model", "dpo", "ppo", "reward", "beta", "algo",
                   "kl_ctl")
    seed_offset = 3
    resume_every = 1  # an RL iteration is worth a checkpoint

    def needs(self, cfg):
        return ("sft", "rm") + (("dpo",) if reward_variant(cfg.reward.name).uses_dpo else ())

    def train(self, ctx, upstream):
        cfg = ctx.cfg.ppo
        learner = LEARNERS[learner_name(ctx.cfg)]
        actor = load_policy(upstream.path("sft"), ctx.cfg.model)  # RL starts from SFT, not DPO
        critic = new_critic(ctx.cfg.reward_model, ctx.cfg.model, upstream.path("rm"), upstream.path("sft"),
                            ctx.data.tokenizer, ctx.rm_tokenizer, upstream["rm"]) if learner.uses_critic else None
        module = learner.module(ctx, upstream, actor, critic)
        prompts_per_rank = cfg.rollout_batch_size // samples_per_prompt(ctx.cfg)  # each sampled k times

        def prompts():
            # prompts drawn with replacement for the global batch (prompts_per_rank per rank), dealt to
            # the ranks: an iteration's rank batches are together the batch one process would draw
            draws = cfg.iterations * prompts_per_rank * ctx.last_trainer.world_size
            order = torch.randint(len(ctx.data.train_prompts), (draws,),
                                  generator=torch.Generator().manual_seed(ctx.cfg.seed))
            return ctx.training_loader(Subset(ctx.data.train_prompts, order.tolist()),
                                       PromptCollator(ctx.data.encoder), prompts_per_rank, shuffle=False), None
        # every iteration is expensive and worth a log line
        ctx.fit(self, module, prompts, callbacks=validation_curve(ctx), max_epochs=1, log_every_n_steps=1)
        if critic is not None and ctx.is_global_zero:
            # the final critic and reward statistics beside the actor (`<run>/checkpoints/critic`), for
            # analysis (`python -m rto.tokens`); RL never reads it back
            save_critic(ctx.ckpt_dir / "critic", critic, ctx.data.tokenizer, getattr(module, "score_moments", None),
                        ctx.config_hash(self.config_keys))
        return actor
