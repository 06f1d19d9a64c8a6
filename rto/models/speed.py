"""Faster kernels for the models a stage trains, with the same numbers.

- `fused_activations`: transformers' `gelu_new` (GPT-2, GPT-Neo, ...) is written as eight
  elementwise torch ops; PyTorch has the same function, the tanh approximation of GELU, as one
  fused kernel (transformers' own `gelu_pytorch_tanh`). Equal to float rounding; on the
  benchmark's GPT-2 it halves the activation's forward+backward time. Saved configs keep
  `gelu_new`.
- `compiled` (`compile=true`): torch.compile of every transformers model while a stage trains,
  in place (`nn.Module.compile`) so state dicts keep their keys, with dynamic shapes because
  sequence lengths change from batch to batch. The compiled call is dropped when the stage ends:
  a later stage deep-copies these models (the reward model and critic start from the SFT
  backbone), and a copied compiled call would still run the original's weights.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import NewGELUActivation

log = logging.getLogger(__name__)


def fused_activations(module: nn.Module) -> int:
    """Swap every `NewGELUActivation` inside `module` for the fused kernel; returns how many."""
    swapped = 0
    for parent in module.modules():
        for name, child in parent.named_children():
            if type(child) is NewGELUActivation:
                setattr(parent, name, nn.GELU(approximate="tanh"))
                swapped += 1
    return swapped


def transformers_models(module: nn.Module) -> list[nn.Module]:
    """The outermost transformers models inside `module` (a LoRA model's base included)."""
    found = []
    for child in module.children():
        found += [child] if isinstance(child, PreTrainedModel) else transformers_models(child)
    return found


@contextlib.contextmanager
def compiled(module: nn.Module, enabled: bool) -> Iterator[None]:
    models = transformers_models(module) if enabled else []
    if models:  # each call pattern (sampling, training, frozen scoring, train/eval mode) is its own graph
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
        setattr(config, name, max(getattr(config, name), 64))
    for model in models:
        model.compile(dynamic=True)
    if models:
        log.info("torch.compile: %d models (the first steps pay for compiling)", len(models))
    try:
        yield
    finally:
        for model in models:
            model._compiled_call_impl = None  # back to eager: see the module docstring


@contextlib.contextmanager
def fast_stage(module: nn.Module, compile: bool) -> Iterator[None]:
    """What every stage's training gets: fused activations, and torch.compile when asked."""
    fused_activations(module)
    with compiled(module, compile):
        yield
