"""The precision a run computes in (`trainer.precision`): `32-true` (fp32) or `bf16-mixed`.

`bf16-mixed` is Lightning's autocast: every training step runs under `torch.autocast(bfloat16)`,
which does the matmuls (linear layers, attention) in bf16, on a CPU with AMX units through oneDNN's
AMX kernels; weights, optimizer states, embeddings, norms, the log-softmax and log-probs (`.float()`
in `rto.models.forward`), the losses and the scalar heads (`ScalarHead`) stay fp32. Outside a
training step (pairs sampling, DPO's precomputed reference, the validation curve, evaluation)
`computing_in` enters the same autocast, so every stage computes in the precision the user picked
(on a GPU run that work runs on the GPU: `rto.models.placement`).

Autocast casts each fp32 weight to bf16 at every call (Lightning turns its cast cache off: the
optimizer steps between forwards would make cached casts stale). For a weight that does not change
that cast is the same every time, so on a CPU `lowered_linears` stores such linear weights in bf16
for a while: the same numbers bit for bit (autocast's cast is this cast) without a cast per call,
which costs more than the matmul itself in a one-token decoding step. The fp32 originals are kept
and put back afterwards (checkpoints and later stages see fp32). Where: a stage's frozen weights
(the reference, reward and DPO models, a LoRA model's base) for the whole stage (`RunContext.fit`);
the actor's trainable ones while it samples a rollout; every model's during evaluation (and with
`cpu_prepack` the large ones packed for oneDNN: `rto.models.prepacked`). Attention
itself runs in fp32 under a CPU's bf16 autocast (`rto.models.cpu_attention`: torch's bf16 attention
backward is slower than its fp32 one on a CPU).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Optional

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rto.cache import may_run_several_processes
from rto.models import cpu_attention

cpu_attention.install()  # a no-op for any call outside a CPU's bf16 autocast

SUPPORTED = {"32-true": None, "bf16-mixed": torch.bfloat16}
ALIASES = {"32": "32-true", "bf16": "bf16-mixed"}  # Lightning's short names for the same two
LOWERED = (nn.Linear, Conv1D)  # weights autocast casts to bf16 at every call (F.linear, addmm)


def normalized(precision) -> str:
    text = str(precision)
    return ALIASES.get(text, text)


def precision_problem(precision) -> Optional[str]:
    """Why `trainer.precision` cannot be run (None if it can)."""
    if normalized(precision) in SUPPORTED:
        return None
    hint = "; for bf16 weights: model.dtype=bf16" if "bf16" in str(precision) else ""
    return (f"trainer.precision must be 32-true (fp32) or bf16-mixed (bf16 matmuls on fp32 weights), got "
            f"{precision!r}{hint}")


def autocast_dtype(precision) -> Optional[torch.dtype]:
    return SUPPORTED.get(normalized(precision))


def device_of(models: Iterable[Optional[nn.Module]]) -> torch.device:
    for model in models:
        for p in ([] if model is None else model.parameters()):
            return p.device
    return torch.device("cpu")


def _lowerable(module: nn.Module, trainable: bool) -> bool:
    """A linear layer (not a subclass: the scalar heads stay fp32) with fp32 weights of the kind asked for."""
    if type(module) not in LOWERED or module.weight.dtype != torch.float32:
        return False
    return all(p.requires_grad == trainable for p in module.parameters(recurse=False))


@contextlib.contextmanager
def lowered_linears(models: Iterable[Optional[nn.Module]], dtype: torch.dtype,
                    trainable: Optional[bool] = False) -> Iterator[int]:
    """Within the block, the fp32 linear weights (and biases) of `models` are bf16 copies: the frozen
    ones (`trainable=False`), the trainable ones (`True`: nothing may train within the block) or all
    (`None`). Only for code under autocast (a bf16 weight meets an fp32 input otherwise). A tensor
    shared by several layers or models (tied or cached weights) gets one copy. Yields how many."""
    copies: dict[tuple, nn.Parameter] = {}
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    seen: set[int] = set()
    for model in models:
        for module in ([] if model is None else model.modules()):
            if id(module) in seen:
                continue
            seen.add(id(module))
            kinds = (False, True) if trainable is None else (trainable,)
            if not any(_lowerable(module, kind) for kind in kinds):
                continue
            for name, param in list(module.named_parameters(recurse=False)):
                key = (param.data_ptr(), tuple(param.shape), param.stride())
                if key not in copies:
                    copies[key] = nn.Parameter(param.detach().to(dtype), requires_grad=False)
                swapped.append((module, name, param))
                setattr(module, name, copies[key])
    try:
        yield len(copies)
    finally:
        for module, name, param in reversed(swapped):
            setattr(module, name, param)


def runs_on_cpu(trainer_cfg) -> bool:
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def frozen_weights_lowered(trainer_cfg, module: nn.Module):
    """For a stage's `trainer.fit`: under `bf16-mixed` in one CPU process, the frozen linear weights of
    `module` stored in bf16 while it trains (a no-op otherwise: on a GPU the per-call cast is cheap and
    memory dear; under DDP the ranks' broadcast of the weights stays as it was)."""
    dtype = autocast_dtype(trainer_cfg.get("precision", "32-true"))
    if dtype is None or not runs_on_cpu(trainer_cfg) or may_run_several_processes(trainer_cfg):
        return contextlib.nullcontext()
    return lowered_linears([module], dtype, trainable=False)


@contextlib.contextmanager
def computing_in(precision, *models: Optional[nn.Module]) -> Iterator[None]:
    """Inference outside a training step in `trainer.precision`: under bf16-mixed, the same autocast
    Lightning's training steps run under and, on a CPU, every linear weight of `models` stored in
    bf16 meanwhile (nothing trains here). fp32: nothing changes."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    device = device_of(models)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(device.type, dtype=dtype, cache_enabled=False))
        if device.type == "cpu":
            stack.enter_context(lowered_linears(models, dtype, trainable=None))
        yield


@contextlib.contextmanager
def sampling_in_autocast(model: nn.Module) -> Iterator[None]:
    """While a training step's rollout samples (under Lightning's autocast on a CPU), the model's
    trainable linear weights in bf16 too: one cast per rollout instead of one per decoding step."""
    device = device_of([model])
    if device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        yield
        return
    with lowered_linears([model], torch.get_autocast_dtype("cpu"), trainable=True):
        yield
