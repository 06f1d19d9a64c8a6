"""Gradient clipping: `sft/rm/dpo.max_grad_norm` clip each batch's whole gradient before its step (with
and without micro-batches, through the real entry point), the sharded norm FSDP needs equals the
unsharded one (two gloo processes), and the flags that would clip twice, or not at all, are refused."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rto.config import ConfigError, validate
from rto.stages.clipping import clip_grad_norm, clip_sharded_grad_norm_
from tests.csv_log import logged
from tests.test_stage_micro_batches import STAGES, stage_weights

CLIP = 1e-3  # far below the tiny stages' gradient norms (measured 0.05-3), so every step is clipped


class RecordingSGD(torch.optim.SGD):
    """SGD that records the L2 norm of the gradient each step applies (after Lightning's closure, which
    runs the backward and the clipping hook, under automatic optimisation)."""

    norms: list[float] = []

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            RecordingSGD.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        super().step()
        return loss


def recorded_run(stage: str, upstream, out, *overrides: str):
    RecordingSGD.norms = []
    weights = stage_weights(stage, upstream, out, *overrides,
                            f"{stage}.optimizer._target_={RecordingSGD.__module__}.RecordingSGD")
    return weights, list(RecordingSGD.norms)


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_a_stage_clips_its_whole_batch_gradient(upstream, tmp_path, stage):
    clip = f"{stage}.max_grad_norm={CLIP}"
    whole, whole_norms = recorded_run(stage, upstream, tmp_path / "whole", clip)
    micro, micro_norms = recorded_run(stage, upstream, tmp_path / "micro", clip,
                                      f"{stage}.micro_batch_size={STAGES[stage][1]}")
    # every step applied a gradient of exactly the clip's norm (Lightning's hook, and the manual path)
    assert len(whole_norms) == len(micro_norms) == 4
    assert whole_norms == pytest.approx([CLIP] * 4, rel=1e-3)
    assert micro_norms == pytest.approx([CLIP] * 4, rel=1e-3)
    # the accumulated batch gradient is clipped once, not each slice's: the same parameters
    for name in whole:
        torch.testing.assert_close(micro[name], whole[name], rtol=1e-6, atol=5e-7, msg=name)


def test_a_stage_clips_beside_a_trainer_clip_of_0(upstream, tmp_path):
    """`trainer.gradient_clip_val=0` means off: the stage's own clip still applies (Lightning's
    `clip_gradients` would have raised on any set trainer value)."""
    _, norms = recorded_run("sft", upstream, tmp_path, f"sft.max_grad_norm={CLIP}", "+trainer.gradient_clip_val=0")
    assert norms == pytest.approx([CLIP] * 4, rel=1e-3)


def test_without_max_grad_norm_a_stage_trains_unclipped_and_logs_its_norm(upstream, tmp_path):
    _, norms = recorded_run("rm", upstream, tmp_path, "rm.micro_batch_size=7")
    assert len(norms) == 4 and min(norms) > 10 * CLIP  # the recorder sees real, unclipped norms
    assert logged(tmp_path, "rm/grad_norm") == pytest.approx(norms, rel=1e-5)  # the norm each step applied


def test_the_logged_norm_is_the_one_before_clipping(upstream, tmp_path):
    _, applied = recorded_run("dpo", upstream, tmp_path / "clipped", f"dpo.max_grad_norm={CLIP}")
    _, free = recorded_run("dpo", upstream, tmp_path / "free")
    assert applied == pytest.approx([CLIP] * 4, rel=1e-3)  # what the steps applied
    before = logged(tmp_path / "clipped", "dpo/grad_norm")
    assert min(before) > 10 * CLIP  # what the gradients were before the clip
    # the first step starts from the same weights: its norm before clipping is the unclipped run's
    assert before[0] == pytest.approx(free[0], rel=1e-5)


def test_ppo_logs_each_optimizers_norm_before_clipping(upstream, tmp_path):
    from rto.main import train
    from tests.conftest import compose_config

    def norms(out, *overrides):
        train(compose_config("stage=ppo", *(f"{s}.checkpoint={upstream / s}" for s in ("sft", "rm", "dpo")),
                             "logger=csv", *overrides, output_dir=out))
        return {name: logged(out, f"ppo/{name}_grad_norm") for name in ("actor", "critic")}

    one_step = ("ppo.ppo_epochs=1", "ppo.minibatch_size=${ppo.rollout_batch_size}")  # one step an iteration
    free = norms(tmp_path / "free", *one_step, "ppo.max_grad_norm=null")
    clipped = norms(tmp_path / "clipped", *one_step, "ppo.max_grad_norm=1e-4")
    for name in ("actor", "critic"):
        assert len(free[name]) == len(clipped[name]) == 2 and min(free[name]) > 1e-3, name
        # the first step: the same rollout from the same weights, so the same norm before clipping
        assert clipped[name][0] == pytest.approx(free[name][0], rel=1e-5), name


def _sharded_worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # every rank draws the same full gradients
        full = [torch.randn(7, 5) * 3, torch.randn(11), torch.randn(4, 4)]
        expected = [g.clone() for g in full]
        reference = [torch.nn.Parameter(torch.zeros_like(g)) for g in full]
        for p, g in zip(reference, expected):
            p.grad = g
        total = torch.nn.utils.clip_grad_norm_(reference, 1.0)
        assert float(total) > 1.0  # the clip acts
        # FSDP's layout with use_orig_params: each rank holds a flat slice of each gradient; the last
        # parameter lies wholly on rank 0 (rank 1 has no gradient for it)
        params = []
        for i, g in enumerate(full):
            flat = g.flatten()
            if i == len(full) - 1:
                part = flat if rank == 0 else None
            else:
                part = flat.chunk(world)[rank].clone()
            p = torch.nn.Parameter(torch.zeros(0 if part is None else part.numel()))
            p.grad = part
            params.append(p)
        for sharding in ("FULL_SHARD", "NO_SHARD"):
            from lightning.pytorch.strategies import FSDPStrategy
            from torch.distributed.fsdp import ShardingStrategy

            strategy = FSDPStrategy()
            strategy.model = SimpleNamespace(process_group=dist.group.WORLD, compute_device=torch.device("cpu"),
                                             sharding_strategy=getattr(ShardingStrategy, sharding))
            module = SimpleNamespace(trainer=SimpleNamespace(strategy=strategy))
            optimizer = SimpleNamespace(param_groups=[{"params": params if sharding == "FULL_SHARD" else reference}])
            if sharding == "FULL_SHARD":
                clip_grad_norm(module, optimizer, 1.0)
                for i, (p, want) in enumerate(zip(params, expected)):
                    if p.grad is not None:
                        part = want.flatten() if i == len(full) - 1 else want.flatten().chunk(world)[rank]
                        torch.testing.assert_close(p.grad, part, rtol=1e-6, atol=1e-7)
            else:  # replicated gradients, already clipped: the norm is not summed over ranks
                before = [p.grad.clone() for p in reference]
                clip_grad_norm(module, optimizer, 1.0)
                for p, want in zip(reference, before):
                    torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)
        # the norm returned is the whole gradient's
        again = [torch.nn.Parameter(torch.zeros_like(q.detach())) for q in params]
        for p, q in zip(again, params):
            p.grad = None if q.grad is None else q.grad.clone()
        norm = clip_sharded_grad_norm_(again, 10.0)
        torch.testing.assert_close(norm, torch.tensor(1.0), rtol=1e-5, atol=1e-6)
        # a batch skipped on every rank (no gradient anywhere): no norm, where one rank alone has none
        # the others' count
        assert clip_sharded_grad_norm_([torch.nn.Parameter(torch.zeros(2))], 1.0) is None
        only_rank_0 = torch.nn.Parameter(torch.zeros(2))
        only_rank_0.grad = torch.full((2,), 3.0) if rank == 0 else None
        torch.testing.assert_close(clip_sharded_grad_norm_([only_rank_0], None), torch.tensor(18.0).sqrt())
    finally:
        dist.destroy_process_group()


def test_sharded_clip_matches_clipping_the_whole_gradient(tmp_path, monkeypatch):
    if "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # the loopback: no network needed
    mp.spawn(_sharded_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def test_outside_fsdp_the_clip_is_torchs_clip_grad_norm_bit_for_bit():
    """Torch's `clip_grad_norm_` on the optimizer's parameters (what Lightning's fp32 and bf16-mixed
    plugins call): the same gradients to the last bit, the same norm, over parameter groups, dtypes and a
    None grad; unclipped, the norm alone and the gradients untouched."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, SingleDeviceStrategy

    torch.manual_seed(0)
    shapes = [(5, 3), (7,), (2, 2), (4,)]
    made = []
    for _ in range(2):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.bfloat16 if i == 2 else torch.float32))
                  for i, s in enumerate(shapes)]
        for i, p in enumerate(params):
            p.grad = None if i == 3 else torch.randn(p.shape).to(p.dtype) * 5
        made.append(params)
    ours, theirs = made
    optimizer = SimpleNamespace(param_groups=[{"params": ours[:2]}, {"params": ours[2:]}])
    module = SimpleNamespace(trainer=SimpleNamespace(strategy=SingleDeviceStrategy(torch.device("cpu"))))
    norm = clip_grad_norm(module, optimizer, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert torch.equal(norm, expected) and float(norm) > 1.0
    for a, b in zip(ours, theirs):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)
    before = [None if p.grad is None else p.grad.clone() for p in ours]
    versions = [None if p.grad is None else p.grad._version for p in ours]
    assert torch.equal(clip_grad_norm(module, optimizer, None), torch.nn.utils.get_total_norm(
        [p.grad for p in ours if p.grad is not None]))
    assert all(b is None or torch.equal(p.grad, b) for p, b in zip(ours, before))
    # unclipped, the gradients are only read: not even multiplied by 1.0 (an in-place write bumps _version)
    assert [None if p.grad is None else p.grad._version for p in ours] == versions
    # DeepSpeed's optimizer holds one rank's flat slice of the weights: no norm is read, nothing clipped
    deepspeed = SimpleNamespace(trainer=SimpleNamespace(strategy=DeepSpeedStrategy.__new__(DeepSpeedStrategy)))
    assert clip_grad_norm(deepspeed, optimizer, 1e-3) is None
    assert all(b is None or torch.equal(p.grad, b) for p, b in zip(ours, before))


@pytest.mark.parametrize("overrides, message", [
    (("rm.max_grad_norm=0",), "rm.max_grad_norm must be null or"),
    (("stage=sft", "sft.max_grad_norm=1.0", "+trainer.gradient_clip_val=1.0"),
     r"trainer.gradient_clip_val=1.0 and sft.max_grad_norm=1.0 would both clip"),
    (("stage=dpo", "dpo.max_grad_norm=1.0", "trainer=deepspeed_stage_2"),
     r"clips inside its engine, with trainer.gradient_clip_val only: use that instead of dpo.max_grad_norm=1.0"),
    (("trainer=deepspeed_stage_2", "stage=ppo"), "takes one optimizer, but PPO trains two"),
])
def test_clipping_flags_that_cannot_apply_are_refused(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides))


def test_clipping_flags_that_apply_are_accepted(make_cfg):
    validate(make_cfg("sft.max_grad_norm=1.0", "rm.max_grad_norm=0.5", "dpo.max_grad_norm=2"))
    validate(make_cfg("stage=sft", "dpo.max_grad_norm=1.0", "+trainer.gradient_clip_val=1.0"))  # DPO not run
    # DeepSpeed without an RL stage (the baselines only): accepted, as DeepSpeed trains SFT, RM and DPO
    validate(make_cfg("trainer=deepspeed_stage_2", "eval.policies=[sft,dpo]"))
    # stages a job only loads do not train: nothing to clip twice, no PPO under DeepSpeed
    validate(make_cfg("stage=eval", "trainer=deepspeed_stage_2"))
    validate(make_cfg("stage=rm", "sft.max_grad_norm=1.0", "+trainer.gradient_clip_val=1.0"))  # SFT loaded
    validate(make_cfg("stage=ppo", "+trainer.gradient_clip_val=0"))  # 0: off (PPO clips with its own)
