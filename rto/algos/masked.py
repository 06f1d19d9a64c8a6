"""Masked reductions over right-padded ``[B, R]`` response tensors.

Every function reads positions from ``mask`` (bool or 0/1 float), never from token ids. Masked
slots may hold NaN or garbage: they are removed with ``torch.where`` before any arithmetic, because
``NaN * 0 == NaN`` would leak them through a multiplicative mask.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

# Sums a tensor over data-parallel ranks (e.g. ``trainer.strategy.reduce(t, reduce_op="sum")``);
# ``None`` means one process. Statistics that take it are then global, not per rank.
SumReduce = Optional[Callable[[torch.Tensor], torch.Tensor]]


def as_bool(mask: torch.Tensor) -> torch.Tensor:
    """Accept a bool or 0/1 numeric mask and return it as bool."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_fill_zero(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` on real slots, exactly 0 on masked slots (NaN-safe)."""
    return torch.where(as_bool(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over real slots (all of them if ``dim`` is None)."""
    x = masked_fill_zero(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over real slots. An empty mask gives 0 (not NaN)."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all real slots (a scalar).

    With ``unbiased`` the Bessel factor n/(n-1) is applied when n > 1; a single real slot gives 0.
    """
    mean = masked_mean(x, mask)
    centered = masked_fill_zero(x - mean, mask)
    n = as_bool(mask).expand_as(x).sum().to(x.dtype)
    var = centered.pow(2).sum() / n.clamp(min=1)
    if unbiased:
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), var)
    return var


def masked_moments(
    x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, reduce: SumReduce = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, var, n)`` over the real slots of ``x`` on every rank ``reduce`` sums over.

    Two passes (sum and count, then centred squares) so the variance is as exact as ``masked_var``'s;
    with ``reduce=None`` the result equals ``masked_mean`` / ``masked_var``.
    """
    reduce = reduce or (lambda t: t)
    totals = reduce(torch.stack([masked_sum(x, mask), as_bool(mask).expand_as(x).sum().to(x.dtype)]))
    n = totals[1]
    mean = totals[0] / n.clamp(min=1)
    var = reduce(masked_fill_zero(x - mean, mask).pow(2).sum()) / n.clamp(min=1)
    if unbiased:
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), var)
    return mean, var, n


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
    reduce: SumReduce = None,
) -> torch.Tensor:
    """``(x - mean) / std`` with statistics over real slots; masked slots are 0.

    ``shift_mean=False`` adds the mean back, ``(x - mean) / std + mean`` (as verl does): the scale is
    normalised but the sign of the average reward is kept. With ``reduce`` (data parallel) the
    statistics are those of the global batch, so every rank whitens as one process would.
    """
    mean, var, _ = masked_moments(x, mask, reduce=reduce)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return masked_fill_zero(whitened, mask)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index ``[B]`` (long) of the last real slot of each row.

    This is where a sentence score lives: the EOS token if one was generated, else the last token of
    a truncated response. Raises ``ValueError`` if a row has no real slot.
    """
    mask = as_bool(mask)
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=-1).values
    if bool((last < 0).any()):
        raise ValueError("last_token_index: a row of the mask has no real token")
    return last


def sequence_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Number of real slots per row, ``[B]`` (long)."""
    return as_bool(mask).sum(dim=-1)
