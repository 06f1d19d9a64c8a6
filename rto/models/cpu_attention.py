"""Attention in fp32 under a CPU's bf16 autocast (`trainer.precision=bf16-mixed` on a CPU).

Under CPU autocast, `scaled_dot_product_attention` runs in bf16, and torch's bf16 flash-attention
*backward* on a CPU is slow: in one SmolLM2-135M PPO iteration (16 x 32 new tokens,
`benchmarks/profile_iteration.py`) it took 0.99 s per update backward against 0.23 s in fp32, so the
bf16 backward was slower than the fp32 one. Attention is a small share of the FLOPs at these lengths
(the linear layers are the rest, and they stay in bf16 on the AMX units), so rto runs the attention
itself in fp32 there: queries, keys and values upcast, the output cast back to bf16 for the output
projection. More exact than the bf16 kernel, and the same function in every forward of a CPU
bf16-mixed run (sampling, pi_old, the update), so the PPO ratio at the first minibatch stays exact.

Installed once (`install`) in place of transformers' `sdpa` attention function; any call that is
not on a CPU under bf16 autocast goes to transformers' own function unchanged, so fp32 runs and GPU
runs compute exactly what they did.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

_INSTALLED = False


def _under_cpu_bf16_autocast(query: torch.Tensor) -> bool:
    return (query.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def sdpa_fp32_under_cpu_autocast(module, query, key, value, attention_mask, **kwargs):
    if not _under_cpu_bf16_autocast(query):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(query.dtype), weights


def install() -> None:
    """Route transformers' `sdpa` attention through `sdpa_fp32_under_cpu_autocast` (idempotent)."""
    global _INSTALLED
    if not _INSTALLED:
        AttentionInterface.register("sdpa", sdpa_fp32_under_cpu_autocast)
        _INSTALLED = True
