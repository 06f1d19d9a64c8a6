"""Bradley-Terry reward model: -log sigmoid(r(x, y_w) - r(x, y_l)), score at the last real token."""

from __future__ import annotations

from typing import Callable, Optional

import lightning as L

from rto.algos.losses import bradley_terry_loss
from rto.models.scalar_head import ScalarHeadModel
from rto.stages.accumulation import AccumulatedSteps
from rto.stages.guard import NonFiniteGuard


class RewardModelModule(AccumulatedSteps, NonFiniteGuard, L.LightningModule):
    stage, pairs = "rm", True

    def __init__(self, model: ScalarHeadModel, optimizer: Callable, on_nonfinite: str = "raise",
                 share_prompt: bool = True, micro_batch_size: Optional[int] = None,
                 max_grad_norm: Optional[float] = None):
        super().__init__()
        self.on_nonfinite = on_nonfinite
        self.share_prompt = share_prompt  # each pair's prompt runs once for both responses
        self.model = model
        self.optimizer_factory = optimizer
        self.configure_steps(micro_batch_size, max_grad_norm)

    def losses(self, batch, train):
        score = self.model.score_pairs if self.share_prompt else self.model.score
        scores = score(batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"])
        if train and not self.finite("rm/scores", scores):
            return None
        chosen, rejected = scores.chunk(2)
        loss, accuracy = bradley_terry_loss(chosen, rejected)
        if train and not self.finite("rm/loss", loss):
            return None
        return loss, {"accuracy": accuracy}

    def configure_optimizers(self):
        return self.optimizer_factory(self.model.parameters())
