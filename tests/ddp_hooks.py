"""A DDP strategy for tests whose gradient all-reduce is DDP's own, each call (one gradient bucket)
counted in the file `$RTO_TEST_COMM_LOG` (one line per call: the rank). Lightning registers a
`ddp_comm_hook` on CUDA only; this registers it on the CPU (gloo) too."""

from __future__ import annotations

import os

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks


def counting_allreduce(state, bucket):
    with open(os.environ["RTO_TEST_COMM_LOG"], "a") as log:
        log.write(f"{dist.get_rank()}\n")
    return default_hooks.allreduce_hook(state, bucket)


class CountingDDPStrategy(DDPStrategy):
    def _register_ddp_hooks(self) -> None:
        self.model.register_comm_hook(None, counting_allreduce)
