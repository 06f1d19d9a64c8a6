"""The update half of an RL iteration, shared by every learner: `ppo_epochs` passes over shuffled
minibatches of `ppo.minibatch_size` sampled responses, one optimizer step per minibatch.

Micro-batches (`ppo.micro_batch_size`, null: off): a minibatch's forward and backward run on slices
of at most that many rows, their gradients accumulating before the one step, so a minibatch need not
fit in memory at once. Every loss is a token mean over the minibatch's real tokens: a micro-batch's
token mean is weighted by its share of the minibatch's tokens (`n_micro / n_minibatch`), so the
accumulated gradient is the whole minibatch's (a micro-batch's own mean, or the mean of the
micro-batches' means, would weight short responses differently). The logged statistics are
combined the same way, so they are the minibatch's too; what is computed over the whole rollout
(reward normalisation, whitening, group baselines) is computed in the experience, before any split.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from rto.algos.logprobs import entropy_from_logits
from rto.algos.losses import kl_loss, ppo_policy_loss
from rto.algos.masked import as_bool, masked_mean
from rto.models.forward import policy_logprobs
from rto.rl.experience import Experience
from rto.rl.modes import update_mode
from rto.stages.clipping import clip_grad_norm
from rto.stages.distributed import gradient_sync, token_share

Losses = dict[str, tuple[torch.Tensor, float]]  # name -> (loss, its weight in the total)


class MinibatchUpdate:
    """Mixin of `RLModule`: the update over minibatches and their micro-batches."""

    def update(self, exp: Experience, iteration: int = 0, beta: Optional[float] = None) -> dict[str, float]:
        """`ppo_epochs` passes over shuffled minibatches: the clipped policy loss, the KL loss term
        where the KL is not in the reward (`kl_in_reward=False`), and the learner's extra losses."""
        cfg = self.ppo_cfg
        beta = self.kl_ctl.value if beta is None else beta
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        update_mode(*self.trained(), dropout=cfg.dropout)
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            epoch_kl = []
            order = torch.randperm(exp.response_ids.shape[0], device=self.generator.device, generator=self.generator)
            for index in order.to(exp.response_ids.device).split(cfg.minibatch_size):
                mb_stats = self.train_minibatch(exp.minibatch(index), optimizers, iteration, beta)
                if mb_stats is None:
                    continue  # skipped: no step from this minibatch
                for key, value in mb_stats.items():
                    stats.setdefault(key, []).append(value)
                epoch_kl.append(mb_stats["approx_kl_k3"])
            # every rank must take the same decision, or DDP waits forever for the ranks that go on
            if cfg.target_kl is not None and epoch_kl and self.mean_over_ranks(np.mean(epoch_kl)) > cfg.target_kl:
                break  # CleanRL's early stop: the policy moved far enough from the rollout's
        return {f"ppo/{key}": float(np.mean(values)) for key, values in stats.items()}

    def train_minibatch(self, mb: Experience, optimizers: list, iteration: int, beta: float) -> Optional[dict]:
        """One optimizer step on the minibatch `mb`, its gradient accumulated over its micro-batches;
        its statistics (losses as logged, clip fractions, approx KL, entropy), or None where a loss
        was not finite and the minibatch is skipped (`on_nonfinite=skip`)."""
        cfg = self.ppo_cfg
        share = token_share(self, mb.response_mask)  # under DDP: losses are token means over all ranks
        tokens = as_bool(mb.response_mask).sum().clamp(min=1)
        for optimizer in optimizers:
            optimizer.zero_grad()
        totals: dict[str, torch.Tensor] = {}
        micro_batches = list(mb.micro_batches(cfg.get("micro_batch_size")))
        for i, micro in enumerate(micro_batches):
            weight = as_bool(micro.response_mask).sum() / tokens  # its share of the minibatch's tokens
            losses, micro_stats = self.losses(micro, beta)
            if not all(self.finite(f"ppo/{name}", loss, step=iteration) for name, (loss, _) in losses.items()):
                for optimizer in optimizers:
                    optimizer.zero_grad()  # nothing of this minibatch reaches a step
                return None
            with gradient_sync(self, sync=i == len(micro_batches) - 1):  # DDP: one all-reduce per minibatch
                self.manual_backward(share * weight * sum(coef * loss for loss, coef in losses.values()))
            for key, value in {**{n: share * loss for n, (loss, _) in losses.items()}, **micro_stats}.items():
                totals[key] = totals.get(key, 0.0) + weight * value.detach()
        for name, optimizer in zip(("actor", "critic"), optimizers):  # a critic-free learner: the actor's only
            norm = clip_grad_norm(self, optimizer, cfg.max_grad_norm)  # before clipping (null: not clipped)
            if norm is not None:
                totals[f"{name}_grad_norm"] = norm
            optimizer.step()
        return {key: float(value) for key, value in totals.items()}

    def losses(self, mb: Experience, beta: float) -> tuple[Losses, dict[str, torch.Tensor]]:
        """The loss terms on (a micro-batch of) a minibatch, each a token mean over its real tokens, and
        its statistics (masked means too)."""
        cfg = self.ppo_cfg
        mask = mb.response_mask
        logprobs, logits = policy_logprobs(self.actor, mb.batch(), temperature=cfg.temperature,
                                           share_repeated=self.samples_per_prompt > 1)  # each prompt once
        pg_loss, stats = ppo_policy_loss(logprobs, mb.logprobs, mb.advantages, mask, cfg.clip_range)
        losses: Losses = {"policy_loss": (pg_loss, 1.0)}
        if not self.kl_in_reward:
            losses["kl_loss"] = (kl_loss(logprobs, mb.ref_logprobs, mask, "k3"), beta)
        extra, extra_stats = self.extra_losses(mb)
        losses.update(extra)
        with torch.no_grad():
            stats["entropy"] = masked_mean(entropy_from_logits(logits), mask)
        return losses, {**stats, **extra_stats}
