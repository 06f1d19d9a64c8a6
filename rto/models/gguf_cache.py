"""GGUF files parsed and dequantised once per process.

transformers reads a GGUF file by parsing all its metadata (the tokenizer's ~50k strings, once for
the config and again for the weights), mapping tensor names and dequantising every tensor in
numpy: 20-40 s for SmolLM2-135M on this project's 2-core machine, and a run used to pay it for
every model built on the file (SFT, the DPO model, the PPO actor, each stage loaded from a
checkpoint) and a sweep for every job. Here the first load of a (file, model class, dtype) keeps a
pristine copy, the template, and every load hands out a copy of it:

- `share=False`: a full copy (a memcpy), for a model whose weights will be trained;
- `share=True`: new parameters on the template's tensors, for a model whose base weights stay
  frozen (a LoRA model: the adapters train, the base does not). The SFT policy, the reference,
  the DPO model and the PPO actor then hold one copy of the base weights between them. Nothing in
  the pipeline writes into a frozen base in place (merging a LoRA adapter happens on a deep copy,
  `ScalarHeadModel.from_causal_lm`); moving or casting a model (`.to`) gives it its own tensors.

Tokenizers stored in GGUF files are cached the same way (a deep copy per load).
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

_TEMPLATES: dict[tuple, object] = {}


def cache_key(loader, source, kwargs: dict) -> tuple:
    return (getattr(loader, "__name__", str(loader)), str(Path(str(source)).expanduser().resolve()),
            kwargs["gguf_file"], str(kwargs.get("dtype")), bool(kwargs.get("trust_remote_code")))


def cached_load(load, loader, source, share: bool, **kwargs):
    """`load(loader, source, **kwargs)` (a `from_pretrained` call on a GGUF file) once per key, then copies."""
    key = cache_key(loader, source, kwargs)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = load(loader, source, **kwargs)
    return copy_of(_TEMPLATES[key], share)


def copy_of(template, share: bool):
    """A deep copy of `template`; `share`: its parameters wrap the template's tensors (no copy).
    Tied parameters stay tied (one template parameter, one new parameter)."""
    if not share or not isinstance(template, nn.Module):
        return copy.deepcopy(template)
    memo = {id(p): nn.Parameter(p.data, requires_grad=p.requires_grad) for p in template.parameters()}
    return copy.deepcopy(template, memo)


def clear() -> None:
    """Forget every template (their memory is freed once no model shares it)."""
    _TEMPLATES.clear()
