"""`sft/rm/dpo.micro_batch_size`: a batch's gradient accumulated over micro-batches gives the
parameters and the logged statistics of the unsplit batch, for each stage before RL, through the real
entry point; bad values and the flags manual optimisation cannot take are refused before training."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaModel

from rto.algos.masked import as_bool
from rto.config import ConfigError, validate
from rto.main import train
from rto.stages import sft as sft_stage
from rto.stages.accumulation import micro_batches
from tests.conftest import compose_config
from tests.csv_log import logged

# SGD: the step is proportional to the gradient, so a gradient of the wrong scale (slices weighted
# by rows instead of tokens, or alike whatever their size) shows in the parameters, where Adam's
# normalisation would hide it. The rates move the weights by 1e-2 to 5e-2 over the epoch's 4 steps; the
# split forwards' float rounding left them within 3e-8 of the unsplit run's (EPYC; the tolerance leaves
# room for other CPUs' rounding), while either wrong weighting moved them 1e-3 to 6e-3 away
STAGES = {  # stage -> (its overrides, a micro-batch size that does not divide the batch of 32)
    "sft": (("sft.optimizer._target_=torch.optim.SGD", "sft.optimizer.lr=0.05"), 5),
    "rm": (("rm.optimizer._target_=torch.optim.SGD", "rm.optimizer.lr=0.05"), 7),
    "dpo": (("dpo.optimizer._target_=torch.optim.SGD", "dpo.optimizer.lr=0.2"), 10),
}
CASES = {"sft": ("sft",), "rm": ("rm",), "dpo": ("dpo",),  # case -> (stage, more overrides)
         # the DPO stage's other losses (IPO: its squared loss diverges at the DPO rate)
         "ipo": ("dpo", "dpo=ipo", "dpo.optimizer.lr=0.002"), "simpo": ("dpo", "dpo=simpo")}
LOGGED = {"sft": ("sft/loss",), "rm": ("rm/loss", "rm/accuracy", "rm/val_loss", "rm/val_accuracy"),
          "dpo": ("dpo/loss", "dpo/reward_accuracy", "dpo/reward_margin", "dpo/val_loss", "dpo/val_reward_margin")}


def checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, by file and name (a causal LM's `model.` prefix dropped, so
    the reward model's backbone and the policy it starts from share names)."""
    return {f"{path.name}/{k.removeprefix('model.')}": v
            for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(path).items()}


def stage_weights(stage: str, upstream: Path, out: Path, *overrides: str) -> dict[str, torch.Tensor]:
    """The stage trained for one epoch from the upstream SFT policy (SFT: from its initial weights,
    the same seed's); its checkpoint's tensors."""
    sft = () if stage == "sft" else (f"sft.checkpoint={upstream / 'sft'}",)
    train(compose_config(f"stage={stage}", *sft, *STAGES[stage][0], *overrides, output_dir=out))
    return checkpoint(out / "checkpoints" / stage)


@pytest.fixture
def forward_rows(monkeypatch):
    """The most rows any transformer forward of the run was given (the tiny preset is a Llama: the
    policy, the reference and the reward model's backbone all run `LlamaModel.forward`)."""
    most = [0]
    real = LlamaModel.forward

    @functools.wraps(real)  # the same signature: callers read it (`cache_keyword`)
    def spy(self, input_ids=None, *args, **kwargs):
        most[0] = max(most[0], (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0])
        return real(self, input_ids, *args, **kwargs)
    monkeypatch.setattr(LlamaModel, "forward", spy)
    return most


@pytest.mark.parametrize("case", sorted(CASES))
def test_micro_batches_give_the_parameters_of_the_whole_batch(upstream, tmp_path, case, forward_rows):
    stage, *loss = CASES[case]
    whole = stage_weights(stage, upstream, tmp_path / "whole", *loss)
    assert forward_rows[0] >= 32  # a whole batch (pairs: 64 rows, or 32 prompts under prompt sharing)
    forward_rows[0] = 0
    micro_size = STAGES[stage][1]
    micro = stage_weights(stage, upstream, tmp_path / "micro", *loss, f"{stage}.micro_batch_size={micro_size}")
    # every forward saw one slice (a pair slice: 2 rows a pair)
    assert 0 < forward_rows[0] <= (micro_size if stage == "sft" else 2 * micro_size)
    assert whole.keys() == micro.keys() and whole
    if stage == "sft":  # the initial policy: SFT for no epoch saves it
        train(compose_config("stage=sft", "sft.epochs=0", output_dir=tmp_path / "start"))
    start = checkpoint((tmp_path / "start" / "checkpoints" if stage == "sft" else upstream) / "sft")
    assert max(float((whole[k] - start[k]).abs().max()) for k in start if k in whole) > 5e-3  # it trained
    for name in whole:
        torch.testing.assert_close(micro[name], whole[name], rtol=1e-6, atol=5e-7, msg=name)
    for key in LOGGED[stage]:  # the logged statistics are the whole batch's too
        whole_log, micro_log = logged(tmp_path / "whole", key), logged(tmp_path / "micro", key)
        assert len(whole_log) == len(micro_log) > 0, key
        assert micro_log == pytest.approx(whole_log, rel=1e-5, abs=1e-6), key


def test_sft_micro_batches_are_weighted_by_tokens(tmp_path):
    """The embedded demonstrations differ in length, so rows and tokens give different weights: the
    equality above would fail with a row weighting (checked here so the test cannot pass vacuously)."""
    from rto.data import SFTCollator
    from rto.context import RunContext
    ctx = RunContext(compose_config("stage=sft", output_dir=tmp_path))
    batch = SFTCollator(ctx.data.encoder)(ctx.data.sft_rows[:32])
    slices = micro_batches(batch, 5, pairs=False)
    tokens = [int(as_bool(s["response_mask"]).sum()) for s in slices]
    rows = [s["response_ids"].shape[0] for s in slices]
    assert rows == [5, 5, 5, 5, 5, 5, 2]
    assert len({t / r for t, r in zip(tokens, rows)}) > 1


def test_pair_slices_keep_both_responses_of_a_pair_and_drop_unused_padding():
    # 3 pairs: chosen rows 0-2, rejected rows 3-5; prompts left-padded, responses right-padded
    prompt_mask = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 1]] * 2)
    response_mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    batch = {"prompt_ids": torch.arange(18).view(6, 3) * prompt_mask, "prompt_mask": prompt_mask,
             "response_ids": torch.arange(24).view(6, 4) * response_mask, "response_mask": response_mask,
             "ref_logps": torch.arange(6.0)}
    first, second = micro_batches(batch, 2, pairs=True)
    assert first["ref_logps"].tolist() == [0.0, 1.0, 3.0, 4.0]  # pairs 0, 1: chosen rows, then rejected rows
    assert second["ref_logps"].tolist() == [2.0, 5.0]
    assert first["prompt_mask"].tolist() == [[0, 1], [1, 1], [0, 1], [1, 1]]  # the all-padding column dropped
    assert first["response_mask"].tolist() == [[1, 0], [1, 1], [1, 0], [1, 1]]
    assert second["prompt_ids"].tolist() == [[6, 7, 8], [15, 16, 17]]
    assert second["response_ids"].tolist() == [[8, 9, 10], [20, 0, 0]]
    (only,) = micro_batches(batch, 3, pairs=True)
    assert only is batch  # no split: the batch untouched
    assert len(micro_batches(batch, 2, pairs=False)) == 3  # rows, not pairs


@pytest.mark.parametrize("overrides, message", [
    (("sft.micro_batch_size=0",), "sft.micro_batch_size must be null or an integer >= 1, got 0"),
    (("rm.micro_batch_size=2.5",), "rm.micro_batch_size must be null or an integer >= 1, got 2.5"),
    (("dpo.micro_batch_size=33",), r"dpo.micro_batch_size \(33\) must not exceed dpo.batch_size \(32\)"),
    (("sft.micro_batch_size=8", "trainer=deepspeed_stage_2", "stage=sft"),
     r"trainer.strategy=deepspeed_stage_2_offload is not run with micro-batches \(sft.micro_batch_size=8\)"),
    (("dpo.micro_batch_size=8", "stage=dpo", "+trainer.gradient_clip_val=1.0"),
     r"trainer.gradient_clip_val=1.0 does not apply under manual optimisation \(dpo.micro_batch_size=8\)"),
    (("+trainer.accumulate_grad_batches=2",),
     r"trainer.accumulate_grad_batches=2 does not apply under manual optimisation \(the RL stage\)"),
])
def test_bad_stage_micro_batches_are_refused(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides))


def test_good_stage_micro_batches_are_accepted(make_cfg):
    validate(make_cfg("sft.micro_batch_size=5", "rm.micro_batch_size=32", "dpo.micro_batch_size=1"))
    # automatic optimisation in every stage the job walks: Lightning clips
    validate(make_cfg("stage=sft", "+trainer.gradient_clip_val=1.0"))
    validate(make_cfg("stage=sft", "dpo.micro_batch_size=8", "+trainer.gradient_clip_val=1.0"))  # DPO not run
    validate(make_cfg("dpo=simpo", "eval.policies=[sft,dpo]", "+trainer.gradient_clip_val=1.0"))  # no RL stage


def test_a_nan_in_one_micro_batch_skips_its_whole_batch(tmp_path, monkeypatch, caplog):
    """`on_nonfinite=skip`: a slice whose loss is NaN drops the whole batch (the gradients of the slices
    before it too); the run goes on and ends with the weights of an unsplit run that skipped those batches,
    its skipped batches counted as steps alike (the warnings name the same steps)."""
    real = sft_stage.policy_logprobs

    def poison(*at: int):
        calls = [0]

        def poisoned(model, batch):
            logprobs, logits = real(model, batch)
            calls[0] += 1
            return (logprobs + float("nan") if calls[0] in at else logprobs), logits
        monkeypatch.setattr(sft_stage, "policy_logprobs", poisoned)

    def skipped() -> list[str]:
        return [r.message for r in caplog.records if r.message.startswith("skipping the batch")]

    common = ("stage=sft", "on_nonfinite=skip", *STAGES["sft"][0])
    poison(2, 3)  # the second and third batches, whole
    with caplog.at_level(logging.WARNING, logger="rto.stages.guard"):
        train(compose_config(*common, output_dir=tmp_path / "whole"))
        whole_warnings = skipped()
        caplog.clear()
        # a batch of 32 is 7 slices of 5: the second batch's fourth slice, the third batch's first
        poison(7 + 4, 7 + 4 + 1)
        train(compose_config(*common, "sft.micro_batch_size=5", output_dir=tmp_path / "micro"))
    assert [w.split(" (")[0] for w in skipped()] == [w.split(" (")[0] for w in whole_warnings]
    assert [" at step 1:" in whole_warnings[0], " at step 2:" in whole_warnings[1]] == [True, True]
    whole, micro = (checkpoint(tmp_path / run / "checkpoints" / "sft") for run in ("whole", "micro"))
    for name in whole:
        torch.testing.assert_close(micro[name], whole[name], rtol=1e-6, atol=5e-7, msg=name)
    # as logged by the unsplit run (which, as Lightning does, repeats the last value for a skipped batch)
    assert logged(tmp_path / "micro", "sft/loss") == pytest.approx(logged(tmp_path / "whole", "sft/loss"), rel=1e-6)
