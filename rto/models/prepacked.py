"""Frozen linear layers through oneDNN with their weights packed once (`cpu_prepacked_linears`).

On a CPU, `F.linear` reads the weight in its stored layout at every call (fp32: a BLAS call; bf16
under autocast: a oneDNN matmul that reorders the weight each time); oneDNN's matmul on a weight
reordered once into its blocked layout is faster at the shapes an RL loop on a real model runs
(SmolLM2's 16-row decoding steps, its tied 49152-row LM head; measured in `benchmarks/README.md`). A
frozen weight never changes within a stage, so it is packed once on entering the stage and the packed
copy dropped on leaving it. In fp32 the numbers are the same matmul's up to float rounding (oneDNN
sums in another order than the BLAS); in bf16 they are autocast's own (the same oneDNN matmul on the
same bf16 operands: bit for bit on the CPU measured, `docs/precision.md`).

Which layers: frozen `nn.Linear` layers whose weights are in the dtype the block computes in: fp32
outside autocast, or, under `bf16-mixed` on a CPU, the frozen layers' bf16 copies
(`rto.models.precision.lowered_linears`) under bf16 autocast, which this layer's forward then does
itself (the input cast to bf16, as autocast casts it). That is the reference, DPO and reward models, a
LoRA model's bases and its tied LM head (every layer where nothing trains: `trainable=True`).
Trainable weights change at every optimizer step (a packed copy would go stale). The input's gradient
still flows (LoRA trains through these layers): its backward is `grad @ W`, as the plain layer's.
Only weights of at least `min_elements` (`cpu_prepack.min_weight_elements`, 2^18 by default): below
that fp32 packing measured no faster (SmolLM2's 192x576 `k_proj` at a decoding step: 0.89x; its
576x576 `q_proj`: 1.31x), so small models, the embedded task's included, keep the plain layers and
their numbers bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from typing import Iterable, Iterator, Optional

import torch
from torch import nn


def available(dtype: torch.dtype = torch.float32) -> bool:
    """oneDNN is built into this torch and has the packed-weight linear (torch's own CPU freezing pass
    uses it), and, for bf16, this CPU runs oneDNN in bf16 (AVX512-BF16 / AMX, or AVX-512 BW, VL and DQ:
    on others oneDNN refuses to pack a bf16 weight, and autocast's bf16 matmul is not oneDNN's)."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")):
        return False
    if dtype == torch.bfloat16:
        return hasattr(ops, "_is_mkldnn_bf16_supported") and bool(ops._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def _register_flop_formula() -> None:
    """torch's `FlopCounterMode` knows `aten::mm` and `addmm`, not this oneDNN op: without a formula a
    FLOP count of a run with packed layers (`benchmarks/profile_iteration.py --torch-profile`) would
    miss their matmuls. `x W^T`: 2 FLOPs per multiply-add, out features read off the output."""
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        rows = 1
        for size in out_shape[:-1]:
            rows *= size
        return 2 * rows * x_shape[-1] * out_shape[-1]


if available():
    _register_flop_formula()


class _Packed:
    """One frozen weight (a parameter object: frozen copies share theirs, `rto.models.pretrained_cache`)
    and its copy packed for oneDNN's forward (`x W^T`), packed again if the weight was written in place
    meanwhile (a checkpoint restored into it when a stage resumes: `load_state_dict` copies in place)."""

    def __init__(self, weight: torch.Tensor, batch_hint: int):
        self.weight, self.batch_hint = weight, batch_hint
        self.version = -1
        self.current()

    def current(self) -> torch.Tensor:
        if self.weight._version != self.version:
            self.version = self.weight._version
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach().contiguous(), self.batch_hint)
        return self.packed


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class _PackedLinear(torch.autograd.Function):
    """y = x W^T + b on the packed weight (x, W and b in one dtype); the backward gives only the input's
    gradient (W, b frozen), as the plain matmul `grad W` (packing W^T as well measured ~1.1x on these
    matmuls in fp32, 2 % of an iteration, for another copy of every weight the update trains through)."""

    @staticmethod
    def forward(ctx, x, pack: _Packed, bias):
        ctx.pack = pack
        return _linear(x, pack.current(), bias)

    @staticmethod
    def backward(ctx, grad):
        return grad.matmul(ctx.pack.weight), None, None


class PackedLinear(nn.Linear):
    """What a frozen `nn.Linear` is within `cpu_prepacked_linears` (its class swapped, its parameters
    untouched). The pack is looked up by layer, and a deep copy made meanwhile is a plain `nn.Linear`
    on its own weights. Any call the pack does not fit takes the plain `F.linear`: a weight not in the
    dtype the call computes in (fp32 under autocast, say), another device, another weight swapped in,
    or gradients wanted for the layer's own parameters."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.Linear's argument name, for keyword calls
        pack = _PACKS.get(self)
        grad = torch.is_grad_enabled()
        dtype = computes_in(input)
        if (pack is None or self.weight is not pack.weight or input.device.type != "cpu"
                or self.weight.dtype != dtype or (grad and any(p.requires_grad for p in self.parameters(recurse=False)))):
            return nn.functional.linear(input, self.weight, self.bias)
        # autocast casts a linear layer's input and bias to its dtype: the same casts, here
        x = input.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        if grad and x.requires_grad:
            return _PackedLinear.apply(x, pack, bias)
        return _linear(x, pack.current(), bias)

    def __deepcopy__(self, memo):
        self.__class__ = nn.Linear
        try:
            return copy.deepcopy(self, memo)
        finally:
            self.__class__ = PackedLinear


AUTOCAST_CASTS = (torch.float32, torch.float16, torch.bfloat16)


def computes_in(input: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer computes in for this input: a CPU autocast's (it casts fp32, fp16 and
    bf16 inputs and weights to it; never fp64), else the input's own."""
    if input.dtype in AUTOCAST_CASTS and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return input.dtype


_PACKS: "weakref.WeakKeyDictionary[nn.Module, _Packed]" = weakref.WeakKeyDictionary()


def _packable(module: nn.Module, trainable: bool, min_elements: int, dtype: torch.dtype) -> bool:
    """A plain CPU `nn.Linear` (not a subclass: the scalar heads stay as they are) with a weight in
    `dtype` of at least `min_elements`, frozen unless `trainable` (a block where nothing trains)."""
    return (type(module) is nn.Linear and module.weight.dtype == dtype
            and module.weight.device.type == "cpu" and module.weight.numel() >= min_elements
            and (trainable or not any(p.requires_grad for p in module.parameters(recurse=False))))


@contextlib.contextmanager
def cpu_prepacked_linears(models: Iterable[Optional[nn.Module]], trainable: bool = False, min_elements: int = 0,
                          batch_hint: int = 16, dtype: torch.dtype = torch.float32) -> Iterator[int]:
    """Within the block, the frozen CPU `nn.Linear` layers of `models` (all of them with
    `trainable=True`: for a block where nothing trains) whose weights are in `dtype` (fp32; bf16 for
    the bf16 copies a CPU's bf16 autocast computes on) and have at least `min_elements` weights run on
    a oneDNN-packed copy of their weight, one copy per shared weight. Yields how many layers."""
    if not available(dtype):
        yield 0
        return
    packs: dict[int, _Packed] = {}  # by weight object (each pack holds its weight: ids stay unique)
    patched: list[nn.Module] = []
    try:
        for model in models:
            for module in ([] if model is None else model.modules()):
                # (a layer already patched, shared by two of the models, is not an `nn.Linear` any more)
                if not _packable(module, trainable, min_elements, dtype):
                    continue
                if id(module.weight) not in packs:
                    packs[id(module.weight)] = _Packed(module.weight, batch_hint)
                _PACKS[module] = packs[id(module.weight)]
                module.__class__ = PackedLinear
                patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            module.__class__ = nn.Linear
            _PACKS.pop(module, None)
