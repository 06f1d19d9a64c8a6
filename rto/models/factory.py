"""Build a causal LM from a `model=` preset, or load a pretrained one, and save it.

A preset either names `pretrained` (a hub id or local folder, optionally a `gguf_file`
in it) or gives the shape of a transformers architecture that SFT trains from scratch.
Options every preset has: `dtype`, `gradient_checkpointing`, `lora` (null or r / alpha /
dropout / target_modules) and `trust_remote_code` (off unless the user sets it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel,
                          PreTrainedTokenizerBase)

from rto.errors import ConfigError, ModelError
from rto.models.pretrained_cache import cached_load
from rto.models.lora import add_lora, is_adapter_folder, load_adapter

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def source_key(model_cfg: DictConfig) -> str:
    """The key a user set to name this model: `model.pretrained`, or `reward_model.path`."""
    return "model.pretrained" if "pretrained" in model_cfg else "reward_model.path"


def from_pretrained(loader, source: str | Path, key: Optional[str], share: bool = False, **kwargs):
    """`loader.from_pretrained(source, **kwargs)`; a source that cannot be found or read (transformers
    raises OSError: no such hub id, no network, files missing) becomes a ModelError naming `key`.
    A GGUF file is parsed once per process (`rto.models.pretrained_cache`); `share`: the caller keeps
    the loaded weights frozen (a LoRA base), so they may be one set of tensors shared between models."""
    return cached_load(lambda *args, **kw: _from_pretrained(*args, key=key, **kw), loader, source, share, **kwargs)


def _from_pretrained(loader, source: str | Path, key: Optional[str], **kwargs):
    try:
        return loader.from_pretrained(str(source), **kwargs)
    except OSError as err:
        raise ModelError(unloadable(key, str(source), err)) from err


def _named(key: Optional[str], source: str | Path) -> str:
    return f"{key}={source}" if key else str(source)


def unloadable(key: Optional[str], source: str, err: Exception) -> str:
    from huggingface_hub import constants

    reason = (str(err).splitlines() or [type(err).__name__])[0]
    if looks_local(source):
        return f"{_named(key, source)}: cannot be loaded ({reason})"
    if constants.HF_HUB_OFFLINE:
        return (f"{_named(key, source)}: cannot be downloaded (HF_HUB_OFFLINE=1) and is not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}); give a local folder ({key}=/path/to/a/save_pretrained/folder), or run "
                f"once with network (HF_HUB_OFFLINE unset) to fill the cache")
    return (f"{_named(key, source)}: cannot be loaded from the hub ({reason}); check the id and the network (without "
            f"network: give a local folder, {key}=/path/to/a/save_pretrained/folder)")


def pretrained_kwargs(model_cfg: DictConfig) -> dict:
    """`from_pretrained` keyword arguments shared by the model and its tokenizer."""
    kwargs = {"trust_remote_code": bool(model_cfg.get("trust_remote_code", False))}
    if model_cfg.get("gguf_file"):
        kwargs["gguf_file"] = model_cfg.gguf_file
    # a local folder never reaches for the hub, and one without a model is a clear error
    source = model_cfg.get("pretrained") or model_cfg.get("path")
    if source:
        kwargs.update(local_model_kwargs(source, need=None if kwargs.get("gguf_file") else "config.json",
                                         key=source_key(model_cfg)))
    return kwargs


def load_tokenizer(model_cfg: DictConfig, path: Optional[str | Path] = None) -> PreTrainedTokenizerBase:
    """The pretrained model's own tokenizer. A missing pad token becomes EOS: every position and
    score in the pipeline is found from attention masks, so pad == eos is safe."""
    tokenizer = from_pretrained(AutoTokenizer, path or model_cfg.pretrained, source_key(model_cfg),
                                **pretrained_kwargs(model_cfg))
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the tokenizer of {path or model_cfg.pretrained} has no EOS token: responses could "
                         f"never end; pick a model whose tokenizer defines one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # the pipeline pads by hand; this only matters to users of `generate`
    return tokenizer


def policy_tokenizer(model_cfg: DictConfig) -> Optional[PreTrainedTokenizerBase]:
    """The tokenizer of a pretrained policy; None for a model built from scratch (the data brings one)."""
    return load_tokenizer(model_cfg) if model_cfg.get("pretrained") else None


def _finish(model: PreTrainedModel, model_cfg: DictConfig, tokenizer: Optional[PreTrainedTokenizerBase],
            trainable: bool) -> PreTrainedModel:
    """Shared by fresh and pretrained models: pad id, gradient checkpointing, LoRA."""
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if trainable and model_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if trainable and model_cfg.get("lora"):
        if model_cfg.get("gradient_checkpointing"):
            model.enable_input_require_grads()  # frozen embeddings + checkpointing need a grad path
        model = add_lora(model, model_cfg.lora)
    return model


def build_policy(model_cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The policy SFT trains: pretrained (with LoRA when configured) or fresh from the preset's shape,
    with special-token ids that agree with `tokenizer`."""
    if model_cfg.pretrained:
        # with LoRA only the adapters train: the base weights may be shared with the run's other copies
        model = from_pretrained(AutoModelForCausalLM, model_cfg.pretrained, "model.pretrained",
                                share=bool(model_cfg.get("lora")), dtype=DTYPES[model_cfg.dtype],
                                **pretrained_kwargs(model_cfg))
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            raise ModelError(f"{model_cfg.pretrained}: its embedding has {model.get_input_embeddings().num_embeddings}"
                             f" rows but its tokenizer {len(tokenizer)} tokens")
        log.info("loaded %s: %.2fM parameters", model_cfg.pretrained, model.num_parameters() / 1e6)
        return _finish(model, model_cfg, tokenizer, trainable=True)
    config = AutoConfig.for_model(
        model_cfg.arch,
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_heads,
        intermediate_size=model_cfg.intermediate_size,
        max_position_embeddings=model_cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    if hasattr(config, "n_inner"):  # GPT-2-style configs name the MLP width n_inner (the rest is mapped)
        config.n_inner = model_cfg.intermediate_size
    for key, value in (model_cfg.get("config_overrides") or {}).items():
        if not hasattr(config, key):
            raise ConfigError(f"model.config_overrides.{key}: {model_cfg.arch} configs have no such field")
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[model_cfg.dtype])
    log.info("built %s from config: %.2fM parameters", model_cfg.arch,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return _finish(model, model_cfg, tokenizer, trainable=True)


def load_policy(path: str | Path, model_cfg: DictConfig | None = None, trainable: bool = True) -> PreTrainedModel:
    """Load a causal LM from a folder written by `save_policy` (full weights, or a LoRA adapter on
    `model.pretrained`), or from a hub id.

    A local folder is read with `local_files_only` (no network call: a run on a machine without
    network never hangs); a path that holds no model is an error saying so.
    """
    folder = Path(path)
    kwargs = {"dtype": "auto"}  # without a config: the dtype it was saved in (transformers 4.x would load float32)
    if model_cfg is not None:
        kwargs["dtype"] = DTYPES[model_cfg.dtype]
        kwargs["trust_remote_code"] = bool(model_cfg.get("trust_remote_code", False))
    if is_adapter_folder(folder):
        if model_cfg is None or not model_cfg.pretrained:
            raise ConfigError(f"{folder} holds a LoRA adapter: loading it needs model.pretrained (its base model)")
        base = from_pretrained(AutoModelForCausalLM, model_cfg.pretrained, "model.pretrained", share=True,
                               dtype=kwargs["dtype"], **pretrained_kwargs(model_cfg))  # frozen under its adapter
        if trainable and model_cfg.get("gradient_checkpointing"):
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        return load_adapter(base, folder)
    kwargs.update(local_model_kwargs(path, key=None))
    model = from_pretrained(AutoModelForCausalLM, path, None, **kwargs)
    if model_cfg is not None and trainable and model_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def looks_local(path: str | Path) -> bool:
    """Absolute, `./`, `~`, more than one `/`, or existing: a path, never sent to the hub."""
    text = str(path)
    return Path(text).expanduser().exists() or text.startswith(("/", "./", "../", "~", ".")) or text.count("/") > 1


def local_model_kwargs(path: str | Path, need: str | None = "config.json", key: Optional[str] = None) -> dict:
    """`local_files_only=True` for a local folder; a clear error (naming `key`) for a path that holds no model."""
    folder = Path(str(path)).expanduser()
    if not looks_local(path):
        return {}  # a hub id ("org/name"): transformers resolves it (from its cache when offline)
    if not folder.is_dir():
        raise ModelError(f"{_named(key, path)}: no model at {path}: the folder does not exist")
    if need and not (folder / need).exists():
        raise ModelError(f"{_named(key, path)}: no model in {folder}: {need} is missing "
                         f"(expected a save_pretrained folder)")
    return {"local_files_only": True}


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    """Full weights, or only the adapter for a LoRA policy (a PeftModel saves just that)."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
