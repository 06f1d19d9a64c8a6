"""A NaN or Inf stops (or skips) the step where it first appears, naming the tensor and the step.

Only real slots are checked: masked slots may hold anything (the masked reductions remove them
with `torch.where` before any arithmetic, so they never reach a loss).
"""

from __future__ import annotations

from typing import Optional

import torch

from rto.algos.masked import as_bool


class NonFiniteError(FloatingPointError):
    """A loss, reward, advantage, value or log-prob holds NaN or Inf on a real slot."""

    def __init__(self, name: str, step: Optional[int] = None, count: Optional[int] = 0, total: int = 0,
                 where: str = "", skippable: bool = True):
        """`count=None`: the values are not known here (another data-parallel rank saw them);
        `where` is appended to the message (a rank, a checkpoint to resume from); `skippable`: whether
        `on_nonfinite=skip` would have skipped it (a training batch) or not (the validation curve)."""
        self.name, self.step, self.count, self.total, self.where = name, step, count, total, where
        self.skippable = skippable
        at = "" if step is None else f" at step {step}"
        values = "" if count is None else f": {count} of {total} real values are NaN or Inf"
        super().__init__(f"{name} is not finite{at}{values}{where}")


def check_finite(name: str, tensor: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 step: Optional[int] = None) -> torch.Tensor:
    """Return `tensor` if every real slot is finite, else raise NonFiniteError naming `name` and `step`."""
    finite = torch.isfinite(tensor.detach())
    if mask is not None:
        finite = finite | ~as_bool(mask).expand_as(finite)
    if bool(finite.all()):
        return tensor
    total = tensor.numel() if mask is None else int(as_bool(mask).expand_as(finite).sum())
    raise NonFiniteError(name, step, int((~finite).sum()), total)
