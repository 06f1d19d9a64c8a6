"""The `on_nonfinite` policy shared by the stage modules: stop the run (default) or skip the batch."""

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

    def finite(self, name: str, tensor: torch.Tensor, mask: Optional[torch.Tensor] = None,
               step: Optional[int] = None) -> bool:
        """True if `tensor` is finite on its real slots; False (batch to skip) or raise otherwise."""
        try:
            check_finite(name, tensor, mask, self.global_step if step is None else step)
        except NonFiniteError as err:
            self.skip_or_raise(err)
            return False
        return True
