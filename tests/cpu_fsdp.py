"""Lightning's FSDP strategy on the CPU, for tests: `trainer=fsdp` with `trainer.accelerator=cpu` and
`trainer.strategy._target_=tests.cpu_fsdp.CPUFSDPStrategy` (gloo). Lightning refuses its own
`FSDPStrategy` without a GPU, and hands FSDP the root device's index (None on the CPU, which FSDP
refuses); torch's FSDP itself runs on the CPU when given the CPU device. The wrapping is Lightning's
call with that one argument changed, less its activation-checkpointing and torchmetrics set-up (neither
used by these runs); everything else is Lightning's strategy."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel


class CPUFSDPStrategy(FSDPStrategy):
    def _setup_model(self, model):
        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return super()._setup_model(model)  # already wrapped: Lightning's own branch
        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                        mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                        **self.kwargs)
