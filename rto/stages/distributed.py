"""What a Lightning module needs to stay exact under data parallelism (DDP averages the ranks' gradients)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import lightning as L
import torch
from torch.nn.parallel import DistributedDataParallel

from rto.algos.masked import as_bool


def token_share(module: L.LightningModule, mask: torch.Tensor) -> torch.Tensor:
    """`tokens_rank * world / tokens_all_ranks`: times a rank's token-mean loss, it makes DDP's average
    of the ranks' gradients the gradient of the token mean over the global batch (what one process
    computes), and the mean over ranks of the logged loss that global mean. Exactly 1 in one process."""
    tokens = as_bool(mask).sum().to(torch.float32)
    if module.trainer.world_size == 1:
        return torch.ones((), device=tokens.device)
    total = module.trainer.strategy.reduce(tokens.clone(), reduce_op="sum")
    return tokens * module.trainer.world_size / total


@contextlib.contextmanager
def gradient_sync(module: L.LightningModule, sync: bool) -> Iterator[None]:
    """A manual backward within `sync=False` keeps its gradients on this rank (DDP's `no_sync`, which
    Lightning's manual optimisation re-arms before every `manual_backward`): a batch split into
    micro-batches then all-reduces once, in its last micro-batch's backward (DDP averages the
    accumulated sums: the same mean gradient), not once per micro-batch. Outside DDP, a no-op; under
    DDP's `static_graph`, too (Lightning then delays the reducer's all-reduce after the first backward,
    which must have been synced). Every parameter must take part in the last micro-batch's graph (it
    does: each forward runs the whole model), else its earlier gradients would stay rank-local."""
    model = module.trainer.strategy.model
    if sync or not isinstance(model, DistributedDataParallel) or getattr(model, "static_graph", False):
        yield
        return
    model.require_backward_grad_sync = False
    try:
        yield
    finally:
        model.require_backward_grad_sync = True
