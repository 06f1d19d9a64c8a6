"""Pretrained weights read once per process, and frozen copies that share one set of tensors.

A GGUF file is slow to read: transformers parses all its metadata (the tokenizer's ~50k strings)
and dequantises every tensor in numpy (45-78 s for SmolLM2-135M, 12-14 s more for its tokenizer, on
a busy 2-core machine: benchmarks/shared_weights.py), and a run used to pay it for every model built
on the file (SFT, the DPO model, the PPO actor, each stage loaded from a checkpoint) and for every
tokenizer. Here the first load of a (file, loader, dtype) keeps a pristine copy, the template, and
every load hands out a copy of it:

- `share=False`: a full copy (a memcpy), for a model whose weights train (full fine-tuning);
- `share=True`: a model whose parameters *are* the template's (the same `Parameter` objects, so a
  move to a GPU moves one set of tensors, not one per model), for a model whose weights stay
  frozen: a LoRA base. The SFT policy (PPO's reference), the DPO model and the PPO actor then hold
  one copy of the base weights between them. Any pretrained source shares this way, not only GGUF
  files (a hub model's weights are not kept after a `share=False` load: it is fast to read again).

Nothing may write into a shared tensor. What would, does not share: a trained reward model's LoRA
is merged into its backbone in place, so a reward model never starts from a shared backbone
(`rto.models.reward`), and a critic whose frozen backbone is the reward model's merges its LoRA on
a copy (`ScalarHeadModel.save_pretrained(in_place=False)`). Casting a model (`.to(dtype)`) gives it
its own tensors. FSDP flattens each wrapped block's parameters into its own buffer, so a
parameter shared between two blocks would be unsharded by one and read by the other: under an
FSDP strategy nothing is shared (`share_frozen_weights(False)`, set per job by `RunContext`).

A GGUF model comes out dense (transformers dequantised it): it no longer says it is quantised,
so it can be saved and trained like any other model. Tokenizers stored in GGUF files are cached
too (a deep copy per load).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn

_TEMPLATES: dict[tuple, object] = {}
_SHARING = {"enabled": True}


def share_frozen_weights(enabled: bool) -> None:
    """Whether `share=True` loads share the template's parameters (off under FSDP)."""
    _SHARING["enabled"] = enabled


def shares_frozen_weights() -> bool:
    return _SHARING["enabled"]


def cache_key(loader, source, kwargs: dict) -> tuple:
    path = Path(str(source)).expanduser()
    where = str(path.resolve()) if path.exists() else str(source)  # a hub id stays as it is
    file = kwargs.get("gguf_file")
    stamp = None
    if file and (path / file).is_file():  # a file rewritten in place is read again
        stat = os.stat(path / file)
        stamp = (stat.st_size, stat.st_mtime_ns)
    return (getattr(loader, "__name__", str(loader)), where, file, stamp, str(kwargs.get("dtype")),
            bool(kwargs.get("trust_remote_code")))


def cached_load(load, loader, source, share: bool, **kwargs):
    """`load(loader, source, **kwargs)` (a `from_pretrained` call) once per key, then copies of it.
    Only GGUF files, and models that will share their weights, are kept."""
    share = share and shares_frozen_weights()
    if not kwargs.get("gguf_file") and not share:
        return load(loader, source, **kwargs)
    key = cache_key(loader, source, kwargs)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = dense(load(loader, source, **kwargs))
    return copy_of(_TEMPLATES[key], share)


def dense(model):
    """A GGUF model whose every weight transformers dequantised to a plain tensor (no packed GGUF
    layer) without its quantisation marks: saved and trained as the dense model it is."""
    quantizer = getattr(model, "hf_quantizer", None)
    if not isinstance(model, nn.Module) or not type(quantizer).__name__.startswith("Gguf"):
        return model  # not GGUF (another quantisation scheme keeps its marks)
    if any(type(m).__name__.startswith("Gguf") for m in model.modules()):
        return model  # weights kept packed: left to transformers
    quantizer.remove_quantization_config(model)
    return model


def copy_of(template, share: bool):
    """A deep copy of `template`; `share`: its parameters are the template's own objects (tied
    parameters stay tied either way). A full copy starts trainable, as `from_pretrained` returns it,
    whatever a sharing model (a LoRA base, frozen) did to the template's flags."""
    if not isinstance(template, nn.Module):
        return copy.deepcopy(template)
    if share:
        return copy.deepcopy(template, {id(p): p for p in template.parameters()})
    return copy.deepcopy(template).requires_grad_(True)


def clear() -> None:
    """Forget every template (their memory is freed once no model shares it)."""
    _TEMPLATES.clear()
