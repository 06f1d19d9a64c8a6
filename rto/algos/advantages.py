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


# ---- critic-free learners: returns-to-go and the learner's own baseline (docs/LEARNERS.md) ----------------
# Rows come in groups of `group_size` consecutive samples of one prompt (the rollout repeats each prompt
# k times). The group baselines read either the samples' episode returns (`episode`: the return from the
# first token, the whole response's reward, KL included where it is in the reward) or their returns-to-go
# from the same position (`position`; a sample that ended before position h has return 0 there).
GROUP_BASELINES = ("episode", "position")


@torch.no_grad()
def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_h = sum_{i >= h} gamma^(i-h) r_i`` over the real tokens of each row; masked slots 0 (and
    skipped: the recursion carries over them, as in ``gae``, so NaN in padding is harmless)."""
    mask = as_bool(mask)
    rewards = masked_fill_zero(rewards, mask)
    running = torch.zeros_like(rewards[:, 0])
    out = torch.zeros_like(rewards)
    for h in reversed(range(rewards.shape[1])):
        value = rewards[:, h] + gamma * running
        real = mask[:, h]
        out[:, h] = torch.where(real, value, torch.zeros_like(value))
        running = torch.where(real, value, running)
    return out


def episode_returns(returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``G_1`` per row ``[B]``: the return-to-go at the first real token (0 for a row without one)."""
    mask = as_bool(mask)
    first = mask.long().argmax(dim=1, keepdim=True)  # the first True (0 when none, then masked out)
    return masked_fill_zero(returns, mask).gather(1, first).squeeze(1)


def _group_statistic(returns: torch.Tensor, mask: torch.Tensor, group_size: int, baseline: str) -> torch.Tensor:
    """``[B / k, k, S]``: what the group baseline averages (S = 1 for `episode`, R for `position`)."""
    if baseline not in GROUP_BASELINES:
        raise ValueError(f"unknown group baseline {baseline!r}; expected one of {GROUP_BASELINES}")
    if group_size < 2 or returns.shape[0] % group_size:
        raise ValueError(f"a group baseline needs >= 2 samples per prompt and whole groups, got group_size="
                         f"{group_size} for {returns.shape[0]} rows")
    stat = episode_returns(returns, mask).unsqueeze(1) if baseline == "episode" else masked_fill_zero(returns, mask)
    return stat.reshape(-1, group_size, stat.shape[1])


@torch.no_grad()
def no_baseline(returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE++: ``A_h = G_h`` (its baseline is the global whitening that follows)."""
    return masked_fill_zero(returns, mask)


@torch.no_grad()
def rloo_advantages(returns: torch.Tensor, mask: torch.Tensor, group_size: int,
                    baseline: str = "episode") -> torch.Tensor:
    """RLOO: ``A^j_h = G^j_h - mean_{i != j} b^i`` over the other k-1 samples of the prompt, with
    ``b^i = G^i_1`` (`episode`) or ``b^i = G^i_h`` (`position`). Masked slots 0."""
    grouped = _group_statistic(returns, mask, group_size, baseline)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return masked_fill_zero(returns - others.reshape(returns.shape[0], -1), mask)


@torch.no_grad()
def grpo_advantages(returns: torch.Tensor, mask: torch.Tensor, group_size: int, baseline: str = "episode",
                    scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: ``A^j_h = (G^j_h - mean_group b) / (std_group b + eps)`` with ``b`` as in `rloo_advantages`
    (the group's own sample included); std with Bessel's correction, as TRL and OpenRLHF take it.
    ``scale=False`` leaves the std out (Dr. GRPO). Masked slots 0."""
    grouped = _group_statistic(returns, mask, group_size, baseline)
    mean = grouped.mean(dim=1, keepdim=True).expand_as(grouped).reshape(returns.shape[0], -1)
    advantages = returns - mean
    if scale:
        std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(returns.shape[0], -1)
        advantages = advantages / (std + eps)
    return masked_fill_zero(advantages, mask)
