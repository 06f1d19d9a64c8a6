"""Where a run's work outside training steps runs: pairs sampling, DPO's precomputed reference and
evaluation. Lightning moves a stage's models to the accelerator for its fit and back to the CPU after
it, so without this a GPU run would sample its pairs and its evaluation on the host CPU (for the
sentiment task's GPU preset: minutes of sampling that the GPU does in seconds). `off_step` moves the
models that work reads to the process's GPU for the work, computes in `trainer.precision` there (the
autocast the training steps ran under), and puts each model back where it was after. A CPU run keeps
the work on the CPU in its precision; another accelerator's run (`mps`) keeps it on the CPU in fp32,
as before. The run-folder commands (`python -m rto.credit`, the token page) re-sample on the CPU in
fp32: for a GPU run they draw other responses than its `samples.jsonl`."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from omegaconf import ListConfig
from torch import nn

from rto.models.precision import computing_in, device_of, normalized, runs_on_cpu

CUDA_ACCELERATORS = ("gpu", "cuda", "auto")


def gpu_ids(devices) -> list[int]:
    """The CUDA ids `trainer.devices` names, parsed by Lightning's own parser (a count, -1 or "auto":
    all, a list, or a string of ids: "1," is GPU 1)."""
    if devices in (None, "auto"):
        devices = -1
    if isinstance(devices, ListConfig):
        devices = list(devices)
    return CUDAAccelerator.parse_devices(devices) or [0]


def off_step_device(trainer_cfg) -> torch.device:
    """The process's GPU on a CUDA run (its local rank's among `trainer.devices`: `LOCAL_RANK` under
    Lightning's DDP launcher, `SLURM_LOCALID` under srun), else the CPU."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if runs_on_cpu(trainer_cfg) or accelerator not in CUDA_ACCELERATORS or not torch.cuda.is_available():
        return torch.device("cpu")
    ids = gpu_ids(trainer_cfg.get("devices", "auto"))
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    return torch.device("cuda", ids[local_rank % len(ids)])


def off_step_precision(trainer_cfg, device: torch.device) -> str:
    """`trainer.precision` on the run's own device; fp32 where the work falls back to the CPU of a run
    on another accelerator (as before: that CPU may have no bf16 units)."""
    if device.type == "cpu" and not runs_on_cpu(trainer_cfg):
        return "32-true"
    return normalized(trainer_cfg.get("precision", "32-true"))


@contextlib.contextmanager
def off_step(trainer_cfg, *models: Optional[nn.Module]) -> Iterator[torch.device]:
    """Inference outside a training step on the run's device and in its precision; yields the device."""
    device = off_step_device(trainer_cfg)
    present = list({id(m): m for m in models if m is not None}.values())
    homes = [(model, device_of([model])) for model in present]
    try:
        for model in present:
            model.to(device)
        with computing_in(off_step_precision(trainer_cfg, device), *present):
            yield device
    finally:
        for model, home in homes:
            model.to(home)
