"""Losses of the pipeline: reward model (Bradley-Terry), the DPO family (DPO, IPO, SimPO), the
clipped policy loss every RL learner shares, PPO's critic loss and the KL loss term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rto.algos.masked import masked_fill_zero, masked_mean, masked_var
from rto.algos.rewards import kl_penalty

DPO_LOSSES = ("sigmoid", "ipo", "simpo")


def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward-model MLE: ``-log sigmoid(r(x, y_w) - r(x, y_l))`` averaged -> ``(loss, accuracy)``."""
    margin = chosen_scores - rejected_scores
    loss = -F.logsigmoid(margin).mean()
    accuracy = (margin > 0).float().mean()
    return loss, accuracy


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO: ``-log sigmoid(beta * [log pi/pi_ref (y_w) - log pi/pi_ref (y_l)])`` averaged.

    Inputs are sequence log-probs ``[B]``. Returns ``(loss, chosen_rewards, rejected_rewards)`` with
    the implicit rewards ``beta * log pi/pi_ref`` detached, for logging.
    """
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps
    loss = -F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio)).mean()
    return loss, beta * chosen_log_ratio.detach(), beta * rejected_log_ratio.detach()


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IPO (Azar et al. 2023): ``(h - 1/(2 tau))^2`` averaged, with ``h = log pi/pi_ref (y_w) - log
    pi/pi_ref (y_l)`` and ``tau = beta``. With the lengths ``|y|`` each log-ratio is averaged over its
    response's tokens first (TRL's form, which the IPO authors' results use); without, summed (the
    paper's equation as written). Same returns as `dpo_loss`."""
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps
    if chosen_lengths is not None:
        chosen_log_ratio = chosen_log_ratio / chosen_lengths.clamp(min=1).to(chosen_log_ratio.dtype)
        rejected_log_ratio = rejected_log_ratio / rejected_lengths.clamp(min=1).to(rejected_log_ratio.dtype)
    loss = (chosen_log_ratio - rejected_log_ratio - 1.0 / (2.0 * beta)).pow(2).mean()
    return loss, beta * chosen_log_ratio.detach(), beta * rejected_log_ratio.detach()


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024), reference-free: ``-log sigmoid(beta/|y_w| log pi(y_w|x) - beta/|y_l|
    log pi(y_l|x) - gamma)`` averaged (``|y|``: real response tokens). Returns ``(loss,
    chosen_rewards, rejected_rewards)`` with SimPO's rewards ``beta/|y| log pi(y|x)`` detached."""
    chosen = beta * policy_chosen_logps / chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)
    rejected = beta * policy_rejected_logps / rejected_lengths.clamp(min=1).to(policy_rejected_logps.dtype)
    loss = -F.logsigmoid(chosen - rejected - gamma).mean()
    return loss, chosen.detach(), rejected.detach()


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """The KL to the reference as a loss term (GRPO's place for it), token-mean over real tokens:
    ``mean_h k(pi, pi_ref)`` with the `kl_penalty` estimator `kind` (GRPO: k3, ``rho - 1 - log rho``
    with ``rho = pi_ref / pi``), differentiable in ``logprobs``."""
    return masked_mean(kl_penalty(logprobs, ref_logprobs, mask, kind), mask)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate, token-mean over real tokens.

    ``rho = pi/pi_old``; ``loss = mean_h max(-A_h rho_h, -A_h clip(rho_h, 1-eps, 1+eps))``.
    Stats (detached, masked means): ``clipfrac`` (share of tokens where the clipped term is active),
    ``approx_kl_k1 = mean(log pi_old - log pi)`` and ``approx_kl_k3 = mean((rho - 1) - log rho)``.
    """
    log_ratio = masked_fill_zero(logprobs - old_logprobs, mask)
    advantages = masked_fill_zero(advantages, mask)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl_k1": masked_mean(-log_ratio, mask),
            "approx_kl_k3": masked_mean((ratio - 1.0) - log_ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped critic loss ``0.5 * mean_h max((V - R)^2, (clip(V, V_old +- c) - R)^2)``.

    ``clip_range=None`` gives the plain ``0.5 * (V - R)^2``. Stat ``vf_clipfrac``: share of real
    tokens where the clipped term is the larger one.
    """
    values = masked_fill_zero(values, mask)
    old_values = masked_fill_zero(old_values, mask)
    returns = masked_fill_zero(returns, mask)
    unclipped = (values - returns).pow(2)
    if clip_range is None:
        clipped = unclipped
    else:
        values_clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
        clipped = (values_clipped - returns).pow(2)
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped > unclipped).float(), mask)}
    return loss, stats


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over real tokens (1 = perfect critic, <= 0 = useless).

    NaN when the returns have zero variance, as in CleanRL: the diagnostic is undefined there.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    undefined = torch.full_like(var_returns, float("nan"))
    return torch.where(var_returns > 0, 1.0 - var_residual / var_returns, undefined)
