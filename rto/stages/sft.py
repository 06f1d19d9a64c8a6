"""Supervised fine-tuning: maximise log pi(y|x) on demonstrations -> pi_ref."""

from __future__ import annotations

from typing import Callable, Optional

import lightning as L
import torch

from rto.algos.masked import as_bool, masked_mean
from rto.models.forward import policy_logprobs
from rto.stages.accumulation import AccumulatedSteps
from rto.stages.distributed import token_share
from rto.stages.guard import NonFiniteGuard


class SFTModule(AccumulatedSteps, NonFiniteGuard, L.LightningModule):
    stage, pairs = "sft", False

    def __init__(self, policy: torch.nn.Module, optimizer: Callable, on_nonfinite: str = "raise",
                 micro_batch_size: Optional[int] = None,
                 max_grad_norm: Optional[float] = None):
        super().__init__()
        self.on_nonfinite = on_nonfinite
        self.policy = policy
        self.optimizer_factory = optimizer
        self.configure_steps(micro_batch_size, max_grad_norm)

    def losses(self, batch, train):
        logprobs, _ = policy_logprobs(self.policy, batch)
        loss = -masked_mean(logprobs, batch["response_mask"])
        if train and not self.finite("sft/loss", loss):
            return None
        return loss, {}

    def shares(self, batch, slices, train):
        # a token mean: each slice weighted by its share of the batch's response tokens; in training
        # also by this rank's share of the global tokens, so DDP's mean gradient (and the logged mean
        # over ranks) is the 1-process one
        share = token_share(self, batch["response_mask"]) if train else 1.0
        if len(slices) == 1:
            return [share]
        tokens = as_bool(batch["response_mask"]).sum().clamp(min=1)  # no token at all: weights 0, not NaN
        return [share * as_bool(s["response_mask"]).sum() / tokens for s in slices]

    def configure_optimizers(self):
        return self.optimizer_factory(self.policy.parameters())
