"""Bradley-Terry reward model: -log sigmoid(r(x, y_w) - r(x, y_l)), score at the last real token."""

from __future__ import annotations

from typing import Callable

import lightning as L

from rto.algos.losses import bradley_terry_loss
from rto.models.scalar_head import ScalarHeadModel
from rto.stages.guard import NonFiniteGuard


class RewardModelModule(NonFiniteGuard, L.LightningModule):
    def __init__(self, model: ScalarHeadModel, optimizer: Callable, on_nonfinite: str = "raise",
                 share_prompt: bool = True):
        super().__init__()
        self.on_nonfinite = on_nonfinite
        self.share_prompt = share_prompt  # each pair's prompt runs once for both responses
        self.model = model
        self.optimizer_factory = optimizer

    def _step(self, batch, prefix: str):
        score = self.model.score_pairs if self.share_prompt else self.model.score
        scores = score(batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                                  batch["response_mask"])
        if prefix == "" and not self.finite("rm/scores", scores):
            return None
        chosen, rejected = scores.chunk(2)
        loss, accuracy = bradley_terry_loss(chosen, rejected)
        if prefix == "" and not self.finite("rm/loss", loss):
            return None
        n = chosen.shape[0]
        self.log(f"rm/{prefix}loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log(f"rm/{prefix}accuracy", accuracy, batch_size=n, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val_")

    def configure_optimizers(self):
        return self.optimizer_factory(self.model.parameters())
