"""Frozen linear layers on oneDNN-packed weights (`cpu_prepack`, rto/models/prepacked.py): in fp32 the
same numbers and gradients as the plain layers up to float rounding, under a CPU's bf16 autocast
autocast's own bit for bit; only where the pack is valid, and on the path a real run takes (a stage's
fit, the off-step work)."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch import nn

from rto.context import stage_speedups
from rto.data.collate import Encoder
from rto.models import prepacked
from rto.models.factory import load_policy, load_tokenizer
from rto.models.lora import add_lora
from rto.models.precision import lowered_linears
from rto.models.prepacked import PackedLinear, cpu_prepacked_linears
from rto.models.scalar_head import ScalarHeadModel
from tests.conftest import compose_config
from tests.real_assets import save_tiny_llama
from tests.test_rl_numbers import COLOR_PROMPTS, TOLERANCE, fit_one_iteration
from tests.test_rl_numbers import first_minibatch  # noqa: F401  (a fixture)

SMALL_LAYERS_TOO = "cpu_prepack.min_weight_elements=0"  # the test models' layers are far below the default
pytestmark = pytest.mark.skipif(not prepacked.available(), reason="this torch has no oneDNN packed linear")
BF16 = pytest.mark.skipif(not prepacked.available(torch.bfloat16), reason="this CPU does not run oneDNN in bf16")
# Packed and plain bf16 layers run oneDNN's matmul on the same bf16 operands: identical on the CPU
# measured (an AMD EPYC with AVX512-BF16), but oneDNN may pick another kernel for a packed weight on
# another CPU (AMX), so the tests hold them to bf16 rounding; the fp32 tests guard the gradient's scale.
BF16_ROUNDING = {"rtol": 1.6e-2, "atol": 1e-3}


def packed_layers(model: nn.Module) -> int:
    return sum(type(m) is PackedLinear for m in model.modules())


@pytest.fixture
def packed_calls(monkeypatch):
    """How many matmuls ran on a packed weight (the fast path, not the plain fallback)."""
    calls = []
    real = prepacked._linear
    monkeypatch.setattr(prepacked, "_linear", lambda *args: calls.append(1) or real(*args))
    return calls


@pytest.fixture
def lora_llama(tmp_path):
    """A tiny Llama with a trained-looking LoRA adapter (B != 0) on every linear layer, and its config."""
    base = save_tiny_llama(tmp_path / "base")
    cfg = compose_config("model=hf", f"model.pretrained={base}",
                         "model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}",
                         "ppo.ppo_epochs=1", SMALL_LAYERS_TOO, output_dir=tmp_path)
    actor = add_lora(load_policy(base, cfg.model), cfg.model.lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    return cfg, base, actor


def lora_grads(actor, ids):
    actor.zero_grad()
    logits = actor(input_ids=ids).logits
    logits.log_softmax(-1).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in actor.named_parameters() if p.requires_grad}


def test_packed_frozen_layers_give_the_plain_logits_and_lora_gradients(lora_llama, packed_calls):
    _, _, actor = lora_llama
    ids = torch.randint(3, actor.config.vocab_size, (3, 11))
    plain_logits, plain_grads = lora_grads(actor, ids)
    frozen = sum(type(m) is nn.Linear and not m.weight.requires_grad for m in actor.modules())
    with cpu_prepacked_linears([actor]) as n:
        assert n == frozen == packed_layers(actor) > 0  # every base layer and the tied LM head; no adapter
        assert all(not m.weight.requires_grad for m in actor.modules() if type(m) is PackedLinear)
        logits, grads = lora_grads(actor, ids)
        assert len(packed_calls) == n  # one forward, every packed layer on its fast path
    assert packed_layers(actor) == 0  # the plain layers again after the block
    torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == plain_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@BF16
def test_under_bf16_autocast_packed_bf16_copies_give_autocasts_numbers(lora_llama, packed_calls):
    """`bf16-mixed` on a CPU: the frozen layers' bf16 copies (as a stage stores them) packed, the layer
    casting its input as autocast would: the logits and LoRA gradients of the plain autocast path."""
    _, _, actor = lora_llama
    ids = torch.randint(3, actor.config.vocab_size, (3, 11))
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False), \
            lowered_linears([actor], torch.bfloat16, trainable=False) as lowered:
        plain_logits, plain_grads = lora_grads(actor, ids)
        with cpu_prepacked_linears([actor]) as n:
            assert n == 0  # fp32 packing (the default dtype) leaves bf16 weights alone
        with cpu_prepacked_linears([actor], dtype=torch.bfloat16) as n:
            assert n == packed_layers(actor) > 0 and lowered > 0
            logits, grads = lora_grads(actor, ids)
            assert len(packed_calls) == n  # every packed layer on its fast path
    assert logits.dtype == torch.bfloat16 and grads.keys() == plain_grads.keys() and grads
    torch.testing.assert_close(logits, plain_logits, **BF16_ROUNDING)
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], **BF16_ROUNDING, msg=name)


@BF16
def test_a_packed_bf16_layer_with_a_bias_gives_autocasts_output_and_input_gradient(packed_calls):
    """A bias (Qwen2's q/k/v projections have one): autocast runs `addmm`, the packed layer adds its bf16
    bias in oneDNN's matmul; a 3-D input, as a model's hidden states are."""
    torch.manual_seed(0)
    layer = nn.Linear(576, 576).requires_grad_(False)
    x = torch.randn(2, 7, 576, requires_grad=True)

    def output_and_grad():
        x.grad = None
        out = layer(x)
        out.float().square().mean().backward()
        return out.detach(), x.grad.clone()

    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False), \
            lowered_linears([layer], torch.bfloat16, trainable=False):
        plain = output_and_grad()
        with cpu_prepacked_linears([layer], dtype=torch.bfloat16) as n:
            packed = output_and_grad()
    assert n == 1 and len(packed_calls) == 1 and packed[0].dtype == torch.bfloat16
    for got, want in zip(packed, plain):
        torch.testing.assert_close(got, want, **BF16_ROUNDING)


@BF16
def test_a_packed_bf16_layer_outside_autocast_takes_the_plain_path(packed_calls):
    """A bf16 pack meets an fp32 input only outside autocast (no cast is wanted there): the plain call."""
    layer = nn.Linear(8, 4).requires_grad_(False).to(torch.bfloat16)
    with cpu_prepacked_linears([layer], dtype=torch.bfloat16) as n:
        assert n == 1
        x = torch.randn(2, 8, dtype=torch.bfloat16)
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
        assert len(packed_calls) == 1  # bf16 in, bf16 weight: packed
        with pytest.raises(RuntimeError):  # fp32 in: what the plain layer does (dtypes must agree)
            layer(x.float())
        assert len(packed_calls) == 1


def test_a_weight_shared_by_two_models_is_packed_once(monkeypatch, packed_calls):
    """Frozen copies share their weights (rto.models.pretrained_cache): one pack per weight, not per layer."""
    first, second, third = (nn.Linear(8, 4).requires_grad_(False) for _ in range(3))
    second.weight = first.weight
    packs = []
    real = prepacked._Packed
    monkeypatch.setattr(prepacked, "_Packed", lambda *args: packs.append(real(*args)) or packs[-1])
    with cpu_prepacked_linears([nn.Sequential(first, third), second]) as n:
        assert n == 3 and len(packs) == 2
        x = torch.randn(2, 8)
        for layer in (first, second, third):
            torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
        assert len(packed_calls) == 3


def test_a_weight_restored_in_place_is_packed_again(packed_calls):
    """A resumed stage restores its checkpoint inside `trainer.fit`, after the packs were made:
    `load_state_dict` copies into the same parameters, and the next forward must see the new values."""
    layer, other = (nn.Linear(8, 4).requires_grad_(False) for _ in range(2))
    x = torch.randn(2, 8)
    with cpu_prepacked_linears([layer]):
        layer(x)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), nn.functional.linear(x, other.weight, other.bias))
    assert len(packed_calls) == 2


def test_a_copy_made_within_the_block_is_a_plain_layer_on_its_own_weights():
    layer = nn.Linear(8, 4).requires_grad_(False)
    x = torch.randn(2, 8)
    with cpu_prepacked_linears([layer]):
        twin = copy.deepcopy(layer)
        twin.weight.mul_(2.0)  # the copy's own weight; the pack is the original's
        torch.testing.assert_close(twin(x), nn.functional.linear(x, twin.weight, twin.bias))
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    assert type(twin) is nn.Linear and type(layer) is nn.Linear


def test_an_error_while_packing_leaves_every_layer_plain(monkeypatch):
    layers = nn.Sequential(*(nn.Linear(8, 8).requires_grad_(False) for _ in range(3)))
    real, made = prepacked._Packed, []

    def fails_on_the_third(*args):
        if len(made) == 2:
            raise MemoryError("out of memory")
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(prepacked, "_Packed", fails_on_the_third)
    with pytest.raises(MemoryError):
        with cpu_prepacked_linears([layers]):
            pass
    assert packed_layers(layers) == 0 and not any(m in prepacked._PACKS for m in layers)


def test_trainable_layers_only_where_nothing_trains():
    layer = nn.Linear(8, 4)  # trainable
    with cpu_prepacked_linears([layer]) as n:
        assert n == 0
    x = torch.randn(2, 8)
    with cpu_prepacked_linears([layer], trainable=True) as n:
        assert n == 1
        with torch.no_grad():
            torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
        layer(x).sum().backward()  # with gradients on, the plain layer: its weight still gets one
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides, packs", [
    ((SMALL_LAYERS_TOO,), True),
    ((), False),  # the default threshold: a layer this small stays plain (the embedded task's models all do)
    (("cpu_prepack.enabled=false", SMALL_LAYERS_TOO), False),
    pytest.param(("trainer.precision=bf16-mixed", SMALL_LAYERS_TOO), True, marks=BF16),  # the stage's bf16 copies
    (("compile=true", SMALL_LAYERS_TOO), False),
])
def test_which_runs_pack(tmp_path, overrides, packs):
    """What a stage's `trainer.fit` runs under (`stage_speedups`): which layers are packed, in which dtype."""
    cfg = compose_config(*overrides, output_dir=tmp_path)
    module = nn.Sequential(nn.Linear(8, 4).requires_grad_(False), nn.Linear(4, 4))  # frozen, trainable
    with stage_speedups(cfg, module):
        assert [type(m) is PackedLinear for m in module] == [packs, False]
        bf16 = "trainer.precision=bf16-mixed" in overrides
        assert module[0].weight.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert packed_layers(module) == 0 and module[0].weight.dtype == torch.float32


@pytest.mark.parametrize("precision", ["32-true", pytest.param("bf16-mixed", marks=BF16)])
def test_a_lora_ppo_iteration_trains_through_packed_frozen_layers(lora_llama, first_minibatch, packed_calls,
                                                                   precision):
    """The real PPOModule under the stage's speed-ups (`stage_speedups`, as `RunContext.fit` runs it):
    during the training step the actor's base, the reference and the reward model are packed, the
    adapter is not, and the update starts at ratio 1 (fp32: pi_old read off the sampler's packed
    forwards; bf16-mixed: recomputed, on the packed bf16 copies)."""
    cfg, base, actor = lora_llama
    cfg.trainer.precision = precision
    tokenizer = load_tokenizer(cfg.model)
    reference = load_policy(base, cfg.model, trainable=False)
    reward_model = ScalarHeadModel.from_causal_lm(reference)
    seen = {}

    class Packed(L.Callback):
        def on_train_batch_start(self, *args):
            seen.update(actor=packed_layers(actor), reference=packed_layers(reference),
                        reward=packed_layers(reward_model),
                        adapters=sum(type(m) is PackedLinear for n, m in actor.named_modules() if "lora_" in n))

    fit_one_iteration(cfg, actor, reference, ScalarHeadModel.from_causal_lm(reference), reward_model, tokenizer,
                      COLOR_PROMPTS, Encoder(tokenizer, 32, 8, append_eos=True, chat_template=True),
                      callbacks=[Packed()], stage_speedups=True)
    assert seen["actor"] > 0 and seen["reference"] > 0 and seen["reward"] > 0 and seen["adapters"] == 0
    assert len(packed_calls) > 0
    assert first_minibatch["ratio"] <= TOLERANCE
    assert packed_layers(actor) == packed_layers(reference) == 0


@pytest.mark.parametrize("precision, dtype", [("32-true", torch.float32),
                                              pytest.param("bf16-mixed", torch.bfloat16, marks=BF16)])
def test_off_step_work_runs_every_layer_packed_and_leaves_them_plain(tmp_path, precision, dtype, packed_calls):
    """Pairs sampling, DPO's precomputed reference and evaluation (`RunContext.off_step`): nothing trains
    there, so the trained policy's own layers are packed too (under bf16-mixed, their bf16 copies)."""
    from rto.context import RunContext

    ctx = RunContext(compose_config(SMALL_LAYERS_TOO, f"trainer.precision={precision}", output_dir=tmp_path))
    policy = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))  # trainable, as a trained policy is handed over
    x = torch.randn(2, 8)
    with ctx.off_step(policy) as device:
        assert device.type == "cpu" and packed_layers(policy) == 2
        assert {m.weight.dtype for m in policy} == {dtype}
        with torch.no_grad():
            assert policy(x).dtype == dtype and len(packed_calls) == 2
    assert packed_layers(policy) == 0 and {m.weight.dtype for m in policy} == {torch.float32}
    ctx.cfg.cpu_prepack.enabled = False
    with ctx.off_step(policy):
        assert packed_layers(policy) == 0


def test_torchs_flop_counter_counts_the_packed_matmuls():
    """`profile_iteration.py --torch-profile` counts linear-layer FLOPs with torch's FlopCounterMode, which
    knows `aten::mm`, not oneDNN's packed linear: the formula registered for it gives the plain count."""
    from torch.utils.flop_counter import FlopCounterMode

    layer = nn.Linear(16, 24).requires_grad_(False)
    x = torch.randn(2, 3, 16)
    counts = []
    for models in ([], [layer]):
        with cpu_prepacked_linears(models), FlopCounterMode(display=False) as counter:
            layer(x)
        counts.append(counter.get_total_flops())
    assert counts == [2 * 6 * 16 * 24] * 2


def test_a_cpu_without_onednn_bf16_keeps_bf16_mixed_plain(tmp_path, monkeypatch):
    """Where oneDNN cannot run bf16 (an AVX2-only CPU) it refuses to pack a bf16 weight: a bf16-mixed
    stage then runs its bf16 copies plain, as before packing existed, and fp32 still packs."""
    real = prepacked.available
    monkeypatch.setattr(prepacked, "available", lambda dtype=torch.float32: dtype != torch.bfloat16 and real(dtype))
    for precision, packs in (("bf16-mixed", False), ("32-true", True)):
        cfg = compose_config(SMALL_LAYERS_TOO, f"trainer.precision={precision}", output_dir=tmp_path)
        module = nn.Sequential(nn.Linear(8, 4).requires_grad_(False))
        with stage_speedups(cfg, module):
            assert (type(module[0]) is PackedLinear) == packs
