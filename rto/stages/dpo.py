"""DPO from pi_ref and its family (`dpo.loss`): sigmoid (DPO, -log sigmoid(beta * [log pi/pi_ref (y_w) -
log pi/pi_ref (y_l)])), IPO, and the reference-free, length-normalised SimPO (rto/algos/losses.py)."""

from __future__ import annotations

from typing import Callable, Optional

import lightning as L
import torch
from lightning.fabric.utilities import move_data_to_device
from torch.utils.data import DataLoader

from rto.algos.losses import dpo_loss, ipo_loss, simpo_loss
from rto.algos.masked import masked_sum
from rto.models.forward import policy_logprobs
from rto.models.precision import device_of
from rto.stages.accumulation import AccumulatedSteps
from rto.stages.guard import NonFiniteGuard


def sequence_logps(model, batch, share_prompt: bool = False) -> torch.Tensor:
    """`log pi(y|x)` per row; `share_prompt`: each pair's prompt runs once for both responses."""
    logprobs, _ = policy_logprobs(model, batch, share_prompt=share_prompt)
    return masked_sum(logprobs, batch["response_mask"], dim=1)


@torch.no_grad()
def with_reference_logps(reference, rows: list[dict], collate: Callable, batch_size: int,
                         share_prompt: bool = False) -> list[dict]:
    """Rows with `ref_logps = (log pi_ref(chosen), log pi_ref(rejected))` attached: the reference is
    frozen, so one pass over the data replaces a reference forward in every step of every epoch."""
    reference.eval()
    device = device_of([reference])  # the GPU on a GPU run (`rto.models.placement`)
    logps = []
    for batch in DataLoader(rows, batch_size=batch_size, collate_fn=collate):
        batch = move_data_to_device(batch, device)
        chosen, rejected = sequence_logps(reference, batch, share_prompt).chunk(2)
        logps += zip(chosen.tolist(), rejected.tolist())
    return [{**row, "ref_logps": pair} for row, pair in zip(rows, logps)]


def preference_loss(kind: str, logps: torch.Tensor, ref_logps, lengths: torch.Tensor, beta: float,
                    simpo_gamma: float = 0.0, ipo_per_token: bool = False):
    """`(loss, chosen_rewards, rejected_rewards)` of the `dpo.loss` family on a pair batch (chosen rows,
    then rejected rows); SimPO reads no reference (`ref_logps` may be None) but the response lengths."""
    (chosen, rejected), (chosen_len, rejected_len) = logps.chunk(2), lengths.chunk(2)
    if kind == "simpo":
        return simpo_loss(chosen, rejected, chosen_len, rejected_len, beta, simpo_gamma)
    ref_chosen, ref_rejected = ref_logps.chunk(2)
    if kind == "ipo":
        per_token = (chosen_len, rejected_len) if ipo_per_token else (None, None)
        return ipo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, *per_token)
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)


class DPOModule(AccumulatedSteps, NonFiniteGuard, L.LightningModule):
    stage, pairs = "dpo", True

    def __init__(self, policy: torch.nn.Module, reference: Optional[torch.nn.Module], beta: float, optimizer: Callable,
                 on_nonfinite: str = "raise", share_prompt: bool = True, loss: str = "sigmoid",
                 simpo_gamma: float = 0.0, ipo_per_token: bool = False, micro_batch_size: Optional[int] = None,
                 max_grad_norm: Optional[float] = None):
        super().__init__()
        self.loss_kind, self.simpo_gamma, self.ipo_per_token = loss, simpo_gamma, ipo_per_token
        self.on_nonfinite = on_nonfinite
        self.share_prompt = share_prompt
        self.policy = policy
        # None where every batch brings its `ref_logps` (`dpo.precompute_ref`) or none is read (SimPO)
        self.reference = None if reference is None else reference.eval().requires_grad_(False)
        self.beta = beta
        self.optimizer_factory = optimizer
        self.configure_steps(micro_batch_size, max_grad_norm)

    def losses(self, batch, train):
        logps = sequence_logps(self.policy, batch, self.share_prompt)
        if self.loss_kind == "simpo":  # reference-free: no reference forward at all
            ref_logps = torch.zeros_like(logps)
        elif "ref_logps" in batch:  # precomputed once over the data (`dpo.precompute_ref`)
            ref_logps = batch["ref_logps"].to(logps)
        elif self.reference is None:
            raise ValueError("a DPO batch without ref_logps, and no reference model to compute them")
        else:
            with torch.no_grad():
                ref_logps = sequence_logps(self.reference, batch, self.share_prompt)
        if train and not (self.finite("dpo/policy_logprobs", logps) and self.finite("dpo/ref_logprobs", ref_logps)):
            return None
        lengths = batch["response_mask"].sum(dim=1)
        loss, chosen_rewards, rejected_rewards = preference_loss(self.loss_kind, logps, ref_logps, lengths, self.beta,
                                                                 self.simpo_gamma, self.ipo_per_token)
        if train and not self.finite("dpo/loss", loss):
            return None
        return loss, {"reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
                      "reward_margin": (chosen_rewards - rejected_rewards).mean()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # a resume checkpoint of a module that held its reference (written before the reference
        # log-probs of held-out pairs were precomputed too): those frozen weights are not this module's
        if self.reference is None:
            state = checkpoint["state_dict"]
            for key in [key for key in state if key.startswith("reference.")]:
                del state[key]

    def configure_optimizers(self):
        return self.optimizer_factory(self.policy.parameters())
