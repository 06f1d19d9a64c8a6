"""Before any training: does this machine have what the config asks for, and do the folders it
names exist? A GPU trainer on a machine without one, a logger whose package is not installed, or a
checkpoint or judge folder that is not there, would otherwise fail minutes (or a whole training run)
later, deep inside Lightning or at evaluation time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rto.errors import MachineError, MissingStageError, ModelError

GPU_ACCELERATORS = ("gpu", "cuda")
CHECKPOINT_STAGES = ("sft", "rm", "dpo", "ppo")
# the packages each tracker needs (the optional ones are extras of this project), and how to get them
LOGGER_PACKAGES = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), 'pip install -e ".[tensorboard]"'),
    "MLFlowLogger": (("mlflow",), 'pip install -e ".[mlflow]"'),
    "WandbLogger": (("wandb",), "pip install wandb"),
}


def check_accelerator(cfg: DictConfig) -> None:
    """`trainer.accelerator=gpu|cuda` needs CUDA; an integer `trainer.devices` needs that many GPUs."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator not in GPU_ACCELERATORS:
        return
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found == 0:
        raise MachineError(
            f"trainer.accelerator={accelerator} (trainer=gpu, ddp or fsdp) needs a CUDA GPU, but torch "
            f"{torch.__version__} finds none (no GPU or driver, or a CPU build of torch); run with trainer=cpu "
            f"(or trainer=ddp_cpu), or install a CUDA build of torch on a GPU machine")
    devices = trainer.get("devices", "auto")
    if isinstance(devices, int) and devices > found:
        raise MachineError(f"trainer.devices={devices}, but this machine has {found} GPU(s); "
                           f"set trainer.devices<={found} (or trainer.devices=auto)")


def check_loggers(cfg: DictConfig) -> None:
    """Every configured logger's package is installed (Lightning would only fail when it is first used)."""
    for name, node in (cfg.get("logger") or {}).items():
        target = str(node.get("_target_", "")) if OmegaConf.is_dict(node) else ""
        modules, install = LOGGER_PACKAGES.get(target.rsplit(".", 1)[-1], ((), ""))
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise MachineError(f"logger.{name} needs the {modules[0]} package, which is not installed: {install}")


def check_folders(cfg: DictConfig) -> None:
    """`<stage>.checkpoint` and `eval.judge`, when set, must be folders."""
    for stage in CHECKPOINT_STAGES:
        path = OmegaConf.select(cfg, f"{stage}.checkpoint", default=None)
        if path and not Path(path).is_dir():
            raise MissingStageError(f"{stage}.checkpoint={path} is not a folder; give the {stage} checkpoint "
                                    f"folder of an earlier run (<run>/checkpoints/{stage}) or drop the key")
    judge = OmegaConf.select(cfg, "eval.judge", default=None)
    if judge and cfg.get("stage") in ("all", "eval") and not Path(judge).is_dir():
        raise ModelError(f"eval.judge={judge} is not a folder; give a reward model folder "
                         f"(e.g. another run's checkpoints/rm) or eval.judge=null")


def preflight(cfg: DictConfig) -> None:
    check_accelerator(cfg)
    check_loggers(cfg)
    check_folders(cfg)
