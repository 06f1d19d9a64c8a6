"""Where a run's work outside training steps runs: pairs sampling, DPO's precomputed reference and
evaluation. Lightning moves a stage's models to the accelerator for its fit and back to the CPU
after it, so without this a GPU run would sample its pairs and its evaluation on the host CPU (for
the sentiment task's GPU preset: minutes of sampling that the GPU does in seconds). `off_step`
moves the models that work reads to the process's GPU for the work, computes in `trainer.precision`
there (the autocast the training steps ran under), and puts each model back where it was after.
A CPU run (and `trainer.accelerator=mps`) keeps the work on the CPU, in its precision as before."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
from torch import nn

from rto.models.precision import computing_in, device_of, normalized, runs_on_cpu

GPU_ACCELERATORS = ("gpu", "cuda", "auto")


def off_step_device(trainer_cfg) -> torch.device:
    """The process's GPU on a CUDA run (`LOCAL_RANK`'s under DDP, as Lightning numbers them), else the CPU."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if runs_on_cpu(trainer_cfg) or accelerator not in GPU_ACCELERATORS or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def off_step(trainer_cfg, *models: Optional[nn.Module]) -> Iterator[torch.device]:
    """Inference outside a training step on the run's device and in its precision; yields the device."""
    device = off_step_device(trainer_cfg)
    present = list({id(m): m for m in models if m is not None}.values())
    homes = [(model, device_of([model])) for model in present]
    try:
        for model in present:
            model.to(device)
        with computing_in(normalized(trainer_cfg.get("precision", "32-true")), *present):
            yield device
    finally:
        for model, home in homes:
            model.to(home)
