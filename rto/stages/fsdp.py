"""Plain models again after a stage trains (or validates) under FSDP.

Lightning's FSDP strategy wraps a stage's LightningModule in place: every transformer block of every
model in it (trainable or frozen) becomes an FSDP unit whose parameters are views of one flat buffer,
sharded over the ranks. Those models outlive the stage: they are written to its checkpoint, read by
the next stages (the reward model is built from a copy of the SFT model) and sampled at evaluation.
A wrapped model cannot be copied (its units hold the process group), writes its tensors under FSDP's
names, holds on each rank only that rank's shard, and has its buffers (the rotary tables) cast to the
mixed precision's buffer dtype (bf16 under `bf16-mixed`).
`unwrap_fsdp` gathers each unit's full parameters, one unit at a time (never the whole model at once on
the device), gives every module its own full copy on the CPU (where Lightning leaves a stage's models
under the other strategies), puts each unit's own module back in its place and its buffers back in their
dtypes from before the stage. Every rank runs it (the gathers are collectives) and ends with the same
full weights. It reads the original parameters FSDP keeps on the modules (`use_orig_params=true`, which
`rto.preflight` requires).
"""

from __future__ import annotations

import gc
from typing import Iterator, Optional

import torch
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP


def _modules_held_by(unit: FSDP) -> Iterator[nn.Module]:
    """The modules whose parameters `unit` itself holds: its subtree, less the nested units'."""
    stack = [unit.module]
    while stack:
        module = stack.pop()
        yield module
        stack.extend(child for child in module.children() if not isinstance(child, FSDP))


def buffer_dtypes(module: nn.Module) -> dict[str, torch.dtype]:
    """What `unwrap_fsdp` restores: each buffer's dtype, by name, before FSDP wraps `module`."""
    return {name: buffer.dtype for name, buffer in module.named_buffers()}


def unwrap_fsdp(root: FSDP, dtypes: Optional[dict[str, torch.dtype]] = None) -> nn.Module:
    """Replace every FSDP unit under `root` (and `root`'s own parameters) by the module it wraps, with
    full CPU copies of the parameters, tied ones still tied, `requires_grad` kept, and the buffers
    named in `dtypes` (`buffer_dtypes` of the module before it was wrapped) back in those dtypes;
    returns the module `root` wrapped (the LightningModule), unwrapped in place."""
    copies: dict[int, nn.Parameter] = {}  # by the identity of FSDP's parameter: a tied weight stays one
    owners: list[tuple[nn.Module, str, int]] = []
    for unit in FSDP.fsdp_modules(root):  # the same order on every rank: each gather is a collective
        with FSDP.summon_full_params(unit, recurse=False, writeback=False):
            for module in _modules_held_by(unit):
                for name, param in module._parameters.items():
                    if param is None:
                        continue
                    if id(param) not in copies:
                        copies[id(param)] = nn.Parameter(param.detach().to("cpu", copy=True),
                                                         requires_grad=param.requires_grad)
                    owners.append((module, name, id(param)))
    # leaving each gather put FSDP's own (sharded) parameters back on the modules: set the copies now
    for parent in list(root.module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FSDP):
                setattr(parent, name, child.module)
    for module, name, key in owners:
        setattr(module, name, copies[key])
    plain = root.module.cpu()  # the buffers (rotary tables, ...) follow the parameters
    for name, buffer in plain.named_buffers():
        if dtypes and name in dtypes and buffer.dtype != dtypes[name]:
            owner, _, attr = name.rpartition(".")
            module = plain.get_submodule(owner)
            module._buffers[attr] = buffer.to(dtypes[name])  # keeps it persistent or not, as registered
    return plain


def unwrap_trainer_models(trainer, dtypes: dict[str, torch.dtype]) -> None:
    """After `trainer.fit` or `trainer.validate`: under FSDP the trainer wrapped its module's models in
    place; every later stage, checkpoint and evaluation reads them plain, and the device memory of the
    sharded weights and their optimizer state goes back (Lightning's FSDP teardown keeps the optimizers
    on the device). Nothing to do under any other strategy."""
    strategy = None if trainer is None else trainer.strategy
    if strategy is not None and isinstance(strategy.model, FSDP):
        strategy.model = unwrap_fsdp(strategy.model, dtypes)  # once: the trainer holds the plain module now
        strategy.optimizers = []
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
