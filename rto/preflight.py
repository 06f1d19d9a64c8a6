"""Before any training: does this machine have what the config asks for, do the folders it names
exist, and do the run's sequences fit its models' context? A GPU trainer on a machine without one, a
logger whose package is not installed, a checkpoint or judge folder that is not there, or a prompt
plus response longer than a model's positions (an index error with learned positions, silent
degradation with rotary ones) would otherwise fail minutes (or a whole training run) later, deep
inside Lightning or at evaluation time."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from rto.config_stages import fsdp_strategy
from rto.errors import ConfigError, MachineError, MissingStageError, ModelError

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


def check_fsdp_shards(cfg: DictConfig) -> None:
    """`trainer=fsdp` must shard over several devices: on one per sharding group (one device, or
    `sharding_strategy=NO_SHARD`, or a HYBRID strategy with one device per node) it shards nothing,
    and torch's FSDP cannot gather tied weights (SmolLM2's embeddings and head) there when a stage
    ends. And it must keep the original parameters on the modules (`use_orig_params`), which
    `rto.stages.fsdp` reads to unwrap the models after each stage."""
    trainer = cfg.get("trainer") or {}
    strategy = trainer.get("strategy")
    if not fsdp_strategy(strategy):
        return
    if not isinstance(strategy, str) and not strategy.get("use_orig_params", False):
        raise ConfigError("trainer=fsdp needs trainer.strategy.use_orig_params=true: the stages' models are "
                          "read back from their original parameters after each stage")
    devices = trainer.get("devices", "auto")
    if isinstance(devices, (list, ListConfig)) or (isinstance(devices, str) and "," in devices):
        per_node = len([d for d in (devices if not isinstance(devices, str) else devices.split(",")) if str(d).strip()])
    elif devices in ("auto", -1, "-1"):
        gpu = str(trainer.get("accelerator", "auto")) in GPU_ACCELERATORS + ("auto",)
        per_node = torch.cuda.device_count() if gpu and torch.cuda.is_available() else 1
    else:
        per_node = int(devices)
    sharding = str(OmegaConf.select(trainer, "strategy.sharding_strategy", default="") or "").upper()
    # HYBRID strategies shard within a node and replicate across nodes
    group = per_node if "HYBRID" in sharding else per_node * int(trainer.get("num_nodes", 1) or 1)
    if group == 1 or "NO_SHARD" in sharding:
        where = ("sharding_strategy=NO_SHARD" if "NO_SHARD" in sharding else
                 "one device per node under a HYBRID sharding_strategy" if "HYBRID" in sharding else "one device")
        raise ConfigError(f"trainer=fsdp with {where} shards nothing: use trainer=gpu on one GPU, trainer=ddp to "
                          "replicate, or trainer=fsdp on 2 or more devices (trainer.devices)")


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


# where model configs keep their context length (Llama and most others; GPT-2; some remote-code models)
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def longest_sequence(cfg: DictConfig) -> tuple[int, str]:
    """The longest prompt + response the run forms, and how it is made up (for the message)."""
    prompt = int(cfg.data.max_prompt_tokens)
    responses = {key: OmegaConf.select(cfg, key, default=None)
                 for key in ("data.max_response_tokens", "ppo.max_new_tokens", "eval.max_new_tokens")}
    key, response = max(((k, int(v)) for k, v in responses.items() if v is not None), key=lambda kv: kv[1])
    return prompt + response, f"data.max_prompt_tokens={prompt} + {key}={response}"


def context_length(model_cfg: DictConfig, source: Optional[str]) -> Optional[tuple[int, str]]:
    """(positions, the config field) of a pretrained model's config, or of a from-scratch preset; None where
    the config cannot be read here (the model's loading then reports why, with its own message)."""
    if not source:
        n = model_cfg.get("max_position_embeddings")
        return (int(n), "model.max_position_embeddings") if n else None
    from transformers import AutoConfig

    from rto.models.factory import pretrained_kwargs

    try:
        config = AutoConfig.from_pretrained(source, **pretrained_kwargs(model_cfg))
    except Exception:  # a missing folder or hub id is the loader's error to report
        return None
    for field in CONTEXT_FIELDS:
        if isinstance(getattr(config, field, None), int):
            return getattr(config, field), f"its config's {field}"
    return None


def check_context_length(cfg: DictConfig) -> None:
    """Prompt + response must fit the policy's positions, and the reward model's when it is another model
    (before any stage trains: `RunContext` calls it once the data has loaded)."""
    if OmegaConf.select(cfg, "data.max_prompt_tokens", default=None) is None:
        return
    need, made_of = longest_sequence(cfg)
    models = [("model.pretrained", cfg.model, cfg.model.get("pretrained"))]
    rm_cfg = cfg.get("reward_model")
    if rm_cfg is not None and rm_cfg.get("source") == "pretrained":
        models.append(("reward_model.path", rm_cfg, rm_cfg.get("path")))
    for key, model_cfg, source in models:
        found = context_length(model_cfg, source)
        if found and need > found[0]:
            name = f"{key}={source}" if source else f"model={cfg.model.get('name')}"
            raise ConfigError(f"{made_of} = {need} tokens, over the {found[0]} positions of {name} ({found[1]}): "
                              f"lower data.max_prompt_tokens or the response length")


def preflight(cfg: DictConfig) -> None:
    check_accelerator(cfg)
    check_fsdp_shards(cfg)
    check_loggers(cfg)
    check_folders(cfg)
    # check_context_length runs once the data is loaded (rto.context): a source's own refusal (real data
    # on a from-scratch model) says more than a length would
