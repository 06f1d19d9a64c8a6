"""Build a causal LM from a `model=` preset, or load a pretrained one, and save it.

A preset either names `pretrained` (a hub id or local folder, optionally a `gguf_file`
in it) or gives the shape of a transformers architecture that SFT trains from scratch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_policy(model_cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A fresh or pretrained causal LM whose special-token ids agree with `tokenizer`."""
    if model_cfg.pretrained:
        return load_policy(model_cfg.pretrained, model_cfg)
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
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[model_cfg.dtype])
    log.info("built %s from config: %.2fM parameters", model_cfg.arch,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def load_policy(path: str | Path, model_cfg: DictConfig | None = None) -> PreTrainedModel:
    """Load a causal LM from a folder (or hub id) written by `save_pretrained`.

    A local folder is read with `local_files_only` (no network call: a run on a machine without
    network never hangs); a path that holds no model is an error saying so.
    """
    kwargs = {}
    if model_cfg is not None:
        kwargs["dtype"] = DTYPES[model_cfg.dtype]
        kwargs["trust_remote_code"] = bool(model_cfg.get("trust_remote_code", False))
        if model_cfg.get("gguf_file"):
            kwargs["gguf_file"] = model_cfg.gguf_file
    kwargs.update(local_model_kwargs(path, need=None if kwargs.get("gguf_file") else "config.json"))
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def local_model_kwargs(path: str | Path, need: str | None = "config.json") -> dict:
    """`local_files_only=True` for a local folder; a clear error for a path that holds no model.

    Something that looks like a path (absolute, `./`, `~`, or existing) is never sent to the hub.
    """
    text = str(path)
    folder = Path(text).expanduser()
    looks_local = folder.exists() or text.startswith(("/", "./", "../", "~", ".")) or text.count("/") > 1
    if not looks_local:
        return {}  # a hub id ("org/name"): transformers resolves it (from its cache when offline)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model at {text}: the folder does not exist")
    if need and not (folder / need).exists():
        raise FileNotFoundError(f"no model in {folder}: {need} is missing (expected a save_pretrained folder)")
    return {"local_files_only": True}


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
