"""Supervised fine-tuning: maximise log pi(y|x) on demonstrations -> pi_ref."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch

from rto.algos.masked import masked_mean
from rto.models.forward import policy_logprobs
from rto.stages.distributed import token_share
from rto.stages.guard import NonFiniteGuard


class SFTModule(NonFiniteGuard, L.LightningModule):
    def __init__(self, policy: torch.nn.Module, optimizer: Callable, on_nonfinite: str = "raise"):
        super().__init__()
        self.on_nonfinite = on_nonfinite
        self.policy = policy
        self.optimizer_factory = optimizer

    def _loss(self, batch) -> torch.Tensor:
        logprobs, _ = policy_logprobs(self.policy, batch)
        return -masked_mean(logprobs, batch["response_mask"])

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        if not self.finite("sft/loss", loss):
            return None  # Lightning skips the optimizer step
        # weighted by this rank's share of the global tokens: DDP's mean gradient (and the logged
        # mean over ranks) is the 1-process one
        loss = loss * token_share(self, batch["response_mask"])
        self.log("sft/loss", loss, prog_bar=True, batch_size=batch["response_ids"].shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("sft/val_loss", self._loss(batch), batch_size=batch["response_ids"].shape[0], sync_dist=True)

    def configure_optimizers(self):
        return self.optimizer_factory(self.policy.parameters())
