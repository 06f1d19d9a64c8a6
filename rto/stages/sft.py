"""Supervised fine-tuning: maximise log pi(y|x) on demonstrations -> pi_ref."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch

from rto.algos.masked import masked_mean
from rto.models.forward import policy_logprobs
from rto.stages.distributed import token_share


class SFTModule(L.LightningModule):
    def __init__(self, policy: torch.nn.Module, optimizer: Callable):
        super().__init__()
        self.policy = policy
        self.optimizer_factory = optimizer

    def _loss(self, batch) -> torch.Tensor:
        logprobs, _ = policy_logprobs(self.policy, batch)
        return -masked_mean(logprobs, batch["response_mask"])

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch) * token_share(self, batch["response_mask"])
        self.log("sft/loss", loss, prog_bar=True, batch_size=batch["response_ids"].shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("sft/val_loss", self._loss(batch), batch_size=batch["response_ids"].shape[0], sync_dist=True)

    def configure_optimizers(self):
        return self.optimizer_factory(self.policy.parameters())
