"""Gradient norms and clipping by norm, one optimizer's parameters at a time, under every strategy
this project trains with but DeepSpeed (whose engine clips, with `trainer.gradient_clip_val`).

The RL stage clips its actor and its critic each to `ppo.max_grad_norm`; SFT, RM and DPO clip to
`<stage>.max_grad_norm` when set. The norm before clipping is logged (`<stage>/grad_norm` every step;
`ppo/actor_grad_norm`, `ppo/critic_grad_norm` as the mean over an iteration's steps): what a clip
threshold is chosen from. Outside FSDP this is torch's `clip_grad_norm_` on the optimizer's
parameters, as Lightning's fp32 and bf16-mixed precision plugins run it, so the numbers are those of
`LightningModule.clip_gradients`; that method itself is not called: it raises when
`trainer.gradient_clip_val` is set at all (0, off, included) and returns no norm. Lightning's FSDP
precision plugin refuses clipping by norm outright, and the FSDP root's own `clip_grad_norm_` clips all
of the module's parameters together, actor and critic as one vector. Under FSDP each rank holds a shard
of every gradient (with `use_orig_params`, the original parameters' gradients are views of the local
shard), so there the squared norms of the local shards are summed over the sharding group, as FSDP's
own `clip_grad_norm_` does, but for the one optimizer's parameters.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy


def optimizer_parameters(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def clip_sharded_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: Optional[float],
                            group: Optional["dist.ProcessGroup"] = None, sharded: bool = True,
                            device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """The joint L2 norm of the gradients of `parameters` (this rank's shards of them when `sharded`)
    over the whole group (fp32, before clipping); unless `max_norm` is None, the gradients scaled so
    that it is at most `max_norm`, with `torch.nn.utils.clip_grad_norm_`'s coefficient
    (`max_norm / (norm + 1e-6)`, at most 1). Every rank of the group must call it (a collective), with
    or without gradients of its own; None where no rank has one (a skipped batch). The norm is reduced on
    `device` (the communication's: FSDP's compute device, also when it offloads gradients to the CPU).
    Every gradient must be sharded alike: one replicated on every rank would count world-size times
    (FSDP's root here wraps the whole module, so every parameter is FSDP's)."""
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    if device is None:
        device = grads[0].device if grads else (parameters[0].device if parameters else torch.device("cpu"))
    # the squared norm and how many gradients there are, in one all-reduce
    totals = torch.tensor([0.0, float(len(grads))], dtype=torch.float32, device=device)
    for grad in grads:
        totals[0] += torch.linalg.vector_norm(grad.detach(), dtype=torch.float32).square().to(device)
    if sharded and dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, group=group)
    if totals[1] == 0:
        return None
    norm = totals[0].sqrt()
    if max_norm is not None:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(coef.to(grad.device, grad.dtype))
    return norm


def clip_grad_norm(module, optimizer, max_norm: Optional[float]) -> Optional[torch.Tensor]:
    """The joint L2 norm of the gradients of `optimizer`'s parameters (a LightningModule's, before its
    `step`), then, unless `max_norm` is None, those gradients clipped to it. None where no parameter has
    a gradient (a skipped batch; under FSDP, on no rank: every rank joins the norm's all-reduce), and
    under DeepSpeed, whose engine clips (with `trainer.gradient_clip_val`) and whose optimizer holds
    one rank's flat slice of the weights: no norm of the whole gradient can be read there."""
    strategy = module.trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy):  # a stage's own clip is refused there (rto.config_stages)
        return None
    parameters = optimizer_parameters(optimizer)
    if isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import ShardingStrategy

        root = strategy.model  # the FSDP root wrapping the whole LightningModule
        return clip_sharded_grad_norm_(parameters, max_norm, group=root.process_group,
                                       sharded=root.sharding_strategy != ShardingStrategy.NO_SHARD,
                                       device=root.compute_device)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    if max_norm is None:  # the norm alone (clip_grad_norm_'s first half): no pass writing the gradients
        return torch.nn.utils.get_total_norm(grads)
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
