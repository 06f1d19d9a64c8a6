"""What a Lightning module needs to stay exact under data parallelism (DDP averages the ranks' gradients)."""

from __future__ import annotations

import lightning as L
import torch

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
