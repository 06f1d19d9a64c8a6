"""The `on_nonfinite` policy shared by the stage modules: stop the run (default) or skip the batch.

Under data parallelism every check is decided over all ranks: a NaN on one rank makes every rank
skip that batch (or stop) together. A rank that skipped alone would leave its peers waiting in the
next gradient all-reduce forever.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from rto.algos.finite import NonFiniteError, check_finite

log = logging.getLogger(__name__)

ON_NONFINITE = ("raise", "skip")


class NonFiniteGuard:
    """Mixin for LightningModules; `on_nonfinite` is set by the module's constructor."""

    on_nonfinite: str = "raise"
    skipped_batches: int = 0

    def skip_or_raise(self, err: NonFiniteError) -> None:
        """Re-raise under `raise`; under `skip`, count and log the skipped batch."""
        if self.on_nonfinite != "skip":
            raise err
        self.skipped_batches += 1
        log.warning("skipping the batch: %s (%d skipped so far)", err, self.skipped_batches)

    def check_on_all_ranks(self, name: str, tensor: torch.Tensor, mask: Optional[torch.Tensor] = None,
                           step: Optional[int] = None) -> None:
        """`check_finite` decided over all ranks: raises NonFiniteError on every rank if any rank's
        tensor is not finite. Every rank must make the same calls (it is a collective)."""
        local = None
        try:
            check_finite(name, tensor, mask, step)
        except NonFiniteError as err:
            local = err
        self.raise_on_all_ranks(name, local, step)

    def raise_on_all_ranks(self, name: str, local: Optional[NonFiniteError], step: Optional[int] = None) -> None:
        """Raise on every rank if any rank met `local` (None: this rank saw no NaN or Inf in `name`).
        Every rank must make the same calls (it is a collective)."""
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            if not trainer.strategy.reduce_boolean_decision(local is None, all=True):
                raise local or NonFiniteError(name, step, count=None, where=" on another data-parallel rank")
        elif local is not None:
            raise local

    def finite(self, name: str, tensor: torch.Tensor, mask: Optional[torch.Tensor] = None,
               step: Optional[int] = None) -> bool:
        """True if `tensor` is finite on its real slots (on every rank); False (batch to skip) or raise."""
        try:
            self.check_on_all_ranks(name, tensor, mask, self.global_step if step is None else step)
        except NonFiniteError as err:
            self.skip_or_raise(err)
            return False
        return True
