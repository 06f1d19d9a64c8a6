"""PPO with a sentence or token reward (CleanRL-style: the update reads top to bottom).

One `training_step` is one PPO iteration: sample a rollout, score it once (`make_experience`),
then `ppo_epochs` passes of clipped policy and value updates over minibatches. Optimisation is
manual because an iteration makes many optimizer steps on two optimizers (actor and critic).

Modes and numbers (`rto/rl/modes.py`): sampling and experience run in eval mode, the update with
dropout off too, so pi_old and pi agree at the first minibatch (ratio 1); every model reads the
rollout at the sampling temperature; pi_old comes from the sampler only in full fp32, else from one
full forward in the update's precision (`sampler_logprobs_are_exact`).

Under DDP each rank samples its own prompts; reward normalisation, advantage whitening, the
target-KL stop and the logged metrics use statistics over all ranks (`sum_over_ranks`). The frozen
reference, reward and DPO models have no trainable parameter, so DDP's reducer never syncs them,
and Lightning re-arms the reducer before every `manual_backward`, so every minibatch's gradients
are averaged over ranks.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Callable, Optional

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from rto.algos.advantages import RunningMoments
from rto.algos.finite import NonFiniteError
from rto.algos.logprobs import entropy_from_logits
from rto.algos.losses import ppo_policy_loss, value_loss
from rto.algos.masked import masked_mean
from rto.models.forward import policy_logprobs
from rto.models.retokenize import RewardScorer
from rto.models.scalar_head import ScalarHeadModel
from rto.rl.experience import Experience, critic_values, make_experience
from rto.rl.metrics import rollout_metrics
from rto.rl.modes import inference_mode, update_mode
from rto.rl.rollout import Rollout, sample_responses, sampler_logprobs_are_exact
from rto.rl.segments import Segments, segments_for
from rto.stages.distributed import token_share
from rto.stages.guard import NonFiniteGuard


def _frozen(module: Optional[torch.nn.Module]) -> Optional[torch.nn.Module]:
    return None if module is None else module.eval().requires_grad_(False)


class PPOModule(NonFiniteGuard, L.LightningModule):
    def __init__(self, actor, critic: ScalarHeadModel, reference, reward_model: RewardScorer,
                 dpo_policy, *, ppo_cfg: DictConfig, reward_cfg: DictConfig, beta: float,
                 actor_optimizer: Callable, critic_optimizer: Callable, eos_id: int, pad_id: int,
                 decode: Callable, gold: Optional[Callable] = None, seed: int = 0, on_nonfinite: str = "raise",
                 segments: Optional[Segments] = None):
        super().__init__()
        self.on_nonfinite = on_nonfinite
        self.automatic_optimization = False
        self.actor, self.critic = actor, critic
        self.reference = _frozen(reference)
        self.reward_model = _frozen(reward_model)
        self.dpo_policy = _frozen(dpo_policy)
        self.ppo_cfg, self.reward_cfg, self.beta = ppo_cfg, reward_cfg, beta
        self.optimizer_factories = (actor_optimizer, critic_optimizer)
        self.eos_id, self.pad_id = eos_id, pad_id
        self.decode, self.gold = decode, gold
        self.score_moments = RunningMoments() if ppo_cfg.normalize_rewards else None
        # Semi-RTO's segment ends; `reward=semi` needs the tokenizer's delimiters (built by the caller)
        self.segments = segments if segments is not None else segments_for(reward_cfg, None)
        # sampling and minibatch order draw from this generator, whose state travels in the resume
        # checkpoint: a resumed run draws exactly what the uninterrupted run would have drawn
        self.seed, self._generator, self._generator_state = seed, None, None

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None or self._generator.device != self.device:
            # one stream per data-parallel rank, so the ranks sample different responses
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed + self.global_rank)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        moments = None if self.score_moments is None else vars(self.score_moments)
        checkpoint["rto_ppo"] = {"generator": self.generator.get_state(), "score_moments": dict(moments or {})}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["rto_ppo"]
        self._generator, self._generator_state = None, state["generator"]
        if self.score_moments is not None:
            vars(self.score_moments).update(state["score_moments"])

    def configure_optimizers(self):
        actor_optimizer, critic_optimizer = self.optimizer_factories
        return [actor_optimizer(self.actor.parameters()), critic_optimizer(self.critic.parameters())]

    def on_train_start(self):
        # seed_everything gave every rank the same random stream: decorrelate the ranks' samples
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(t, reduce_op="sum")

    def mean_over_ranks(self, value: float) -> float:
        return float(self.trainer.strategy.reduce(torch.tensor(value, device=self.device), reduce_op="mean"))

    def rollout(self, batch: dict) -> Rollout:
        exact = sampler_logprobs_are_exact(self.actor)  # else make_experience recomputes pi_old
        response_ids, response_mask, *logprobs = sample_responses(
            self.actor, batch["prompt_ids"], batch["prompt_mask"], self.ppo_cfg.max_new_tokens,
            self.eos_id, self.pad_id, self.ppo_cfg.temperature, self.generator, return_logprobs=exact)
        return Rollout(batch["prompt_ids"], batch["prompt_mask"], response_ids, response_mask,
                       batch.get("prompt_text", []), logprobs=logprobs[0] if exact else None)

    def training_step(self, batch, batch_idx):
        start = time.perf_counter()
        iteration = batch_idx + 1
        inference_mode(self.actor, self.critic, self.reference, self.reward_model, self.dpo_policy)
        rollout = self.rollout(batch)
        sampling_seconds = time.perf_counter() - start
        try:
            experience = make_experience(
                rollout, actor=self.actor, critic=self.critic, reference=self.reference,
                reward_model=self.reward_model, dpo_policy=self.dpo_policy, reward_cfg=self.reward_cfg,
                beta=self.beta, ppo_cfg=self.ppo_cfg, score_moments=self.score_moments,
                reduce=self.sum_over_ranks, check=partial(self.check_on_all_ranks, step=iteration),
                segments=self.segments)
        except NonFiniteError as err:
            self.skip_or_raise(err)
            return None  # skip: this rollout is not trained on
        rollout_seconds = time.perf_counter() - start
        update_stats = self.update(experience, iteration)
        metrics = {**rollout_metrics(rollout, experience, self.eos_id, self.decode, self.gold), **update_stats}
        if getattr(self.reward_model, "retokenize", False):  # responses cut at the reward model's limit
            metrics["ppo/rm_truncated"] = self.reward_model.last_truncated / rollout.response_ids.shape[0]
        metrics["ppo/iteration"] = float(iteration)
        metrics["ppo/rollout_seconds"] = rollout_seconds
        metrics["ppo/rollout_tokens_per_second"] = float(rollout.response_mask.sum()) / sampling_seconds
        metrics["ppo/samples_per_second"] = rollout.response_ids.shape[0] / (time.perf_counter() - start)
        # sync_dist: the logged value is the mean over ranks
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=rollout.response_ids.shape[0], sync_dist=True)

    def update(self, exp: Experience, iteration: int = 0) -> dict[str, float]:
        cfg = self.ppo_cfg
        actor_opt, critic_opt = self.optimizers()
        n = exp.response_ids.shape[0]
        update_mode(self.actor, self.critic, dropout=cfg.dropout)
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            epoch_kl = []
            order = torch.randperm(n, device=self.generator.device, generator=self.generator).to(exp.response_ids.device)
            for index in order.split(cfg.minibatch_size):
                mb = exp.minibatch(index)
                mask = mb.response_mask
                logprobs, logits = policy_logprobs(self.actor, mb.batch(), temperature=cfg.temperature)
                values = critic_values(self.critic, mb.batch(), self.score_moments)
                pg_loss, pg_stats = ppo_policy_loss(logprobs, mb.logprobs, mb.advantages, mask, cfg.clip_range)
                vf_loss, vf_stats = value_loss(values, mb.values, mb.returns, mask, cfg.value_clip_range)
                if not (self.finite("ppo/policy_loss", pg_loss, step=iteration)
                        and self.finite("ppo/value_loss", vf_loss, step=iteration)):
                    continue  # skip this minibatch: no gradient from it
                share = token_share(self, mask)  # under DDP: losses are token means over all ranks
                pg_loss, vf_loss = pg_loss * share, vf_loss * share
                actor_opt.zero_grad()
                critic_opt.zero_grad()
                self.manual_backward(pg_loss + cfg.value_loss_coef * vf_loss)
                if cfg.max_grad_norm is not None:
                    self.clip_gradients(actor_opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
                    self.clip_gradients(critic_opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
                actor_opt.step()
                critic_opt.step()
                with torch.no_grad():
                    entropy = masked_mean(entropy_from_logits(logits), mask)
                for key, value in {"policy_loss": pg_loss, "value_loss": vf_loss, "entropy": entropy,
                                   **pg_stats, **vf_stats}.items():
                    stats.setdefault(key, []).append(float(value.detach()))
                epoch_kl.append(float(pg_stats["approx_kl_k3"]))
            # every rank must take the same decision, or DDP waits forever for the ranks that go on
            if cfg.target_kl is not None and epoch_kl and self.mean_over_ranks(np.mean(epoch_kl)) > cfg.target_kl:
                break  # CleanRL's early stop: the policy moved far enough from the rollout's
        return {f"ppo/{key}": float(np.mean(values)) for key, values in stats.items()}
