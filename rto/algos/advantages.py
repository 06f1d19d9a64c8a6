"""Advantage estimation (GAE) and reward normalisation over ``[B, R]`` response tensors."""

from __future__ import annotations

import torch

from rto.algos.masked import SumReduce, as_bool, masked_fill_zero, masked_moments


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) -> ``(advantages, returns)``.

    ``delta_h = r_h + gamma * V(s_{h+1}) - V(s_h)``, ``A_h = delta_h + gamma * lam * A_{h+1}``, with
    ``V = 0`` after the last real token (the episode ends there, EOS or truncation alike).
    ``returns = A + V`` are the critic's targets. Masked slots are skipped (the recursion carries
    over them), so right padding and NaN in padding are harmless; they come out as 0.
    """
    mask = as_bool(mask)
    rewards = masked_fill_zero(rewards, mask)
    values = masked_fill_zero(values, mask)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    advantages = torch.zeros_like(rewards)
    for h in reversed(range(rewards.shape[1])):
        delta = rewards[:, h] + gamma * next_value - values[:, h]
        advantage = delta + gamma * lam * next_advantage
        real = mask[:, h]
        advantages[:, h] = torch.where(real, advantage, torch.zeros_like(advantage))
        next_advantage = torch.where(real, advantage, next_advantage)
        next_value = torch.where(real, values[:, h], next_value)
    returns = masked_fill_zero(advantages + values, mask)
    return advantages, returns


class RunningMoments:
    """Running mean and std of a stream of batches (Chan et al. parallel update).

    Used for the reward-normalisation option: feed it the sentence scores (``mask=None``) or the
    per-token rewards with their mask, then ``normalize`` the batch with the running statistics.
    """

    def __init__(self, eps: float = 1e-8):
        self.mean = 0.0
        self.var = 1.0  # population variance
        self.count = 0.0
        self.eps = eps

    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None,
               reduce: SumReduce = None) -> tuple[float, float]:
        """Merge a batch into the running statistics; return the batch's ``(mean, std)``.

        With ``reduce`` (data parallel) the batch is the union of every rank's, so all ranks keep
        the same statistics.
        """
        values = x.flatten() if mask is None else x[as_bool(mask).expand_as(x)]
        values = values.double()
        mean, var, count = masked_moments(values, torch.ones_like(values, dtype=torch.bool), unbiased=False,
                                          reduce=reduce)
        n = count.item()
        if n == 0:
            return self.mean, self.var**0.5
        batch_mean, batch_var = mean.item(), var.item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.var = (
            self.count * self.var + n * batch_var + delta**2 * self.count * n / total
        ) / total
        self.mean += delta * n / total
        self.count = total
        return batch_mean, batch_var**0.5

    @property
    def std(self) -> float:
        return self.var**0.5

    def normalize(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True
    ) -> torch.Tensor:
        """``(x - mean) / std`` with the running statistics; masked slots 0 if a mask is given."""
        out = (x - self.mean) / (self.std + self.eps) if shift_mean else x / (self.std + self.eps)
        return out if mask is None else masked_fill_zero(out, mask)
