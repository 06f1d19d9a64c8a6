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
    if hasattr(config, "n_inner"):  # GPT-2-style configs name the MLP width n_inner (the rest is mapped)
        config.n_inner = model_cfg.intermediate_size
    for key, value in (model_cfg.get("config_overrides") or {}).items():
        if not hasattr(config, key):
            raise ValueError(f"model.config_overrides.{key}: {model_cfg.arch} configs have no such field")
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[model_cfg.dtype])
    log.info("built %s from config: %.2fM parameters", model_cfg.arch,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def load_policy(path: str | Path, model_cfg: DictConfig | None = None) -> PreTrainedModel:
    """Load a causal LM from a folder (or hub id) written by `save_pretrained`."""
    kwargs = {}
    if model_cfg is not None:
        kwargs["dtype"] = DTYPES[model_cfg.dtype]
        kwargs["trust_remote_code"] = bool(model_cfg.trust_remote_code)
        if model_cfg.get("gguf_file"):
            kwargs["gguf_file"] = model_cfg.gguf_file
    folder = Path(path)
    if folder.is_dir() and not kwargs.get("gguf_file") and not (folder / "config.json").exists():
        raise FileNotFoundError(f"no model in {folder}: config.json is missing")
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
