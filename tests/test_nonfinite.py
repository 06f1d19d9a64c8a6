"""NaN / Inf is caught where it appears (step, tensor, last good checkpoint), or its batch skipped;
a NaN in a masked slot never reaches a loss."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from rto.algos.finite import NonFiniteError, check_finite
from rto.algos.losses import dpo_loss, ppo_policy_loss, value_loss
from rto.algos.masked import masked_mean, masked_sum, masked_whiten
from rto.main import train
from rto.stages import critic_free as critic_free_stage
from rto.stages import ppo as ppo_stage
from rto.stages import sft as sft_stage
from tests.conftest import compose_config

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_check_finite_names_tensor_step_and_count(bad):
    x = torch.tensor([[0.0, bad, 1.0], [2.0, 3.0, 4.0]])
    with pytest.raises(NonFiniteError, match=r"advantages is not finite at step 7: 1 of 6 real values"):
        check_finite("advantages", x, step=7)


def test_check_finite_ignores_masked_slots():
    x = torch.tensor([[0.0, 1.0, NAN], [2.0, INF, INF]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert check_finite("logprobs", x, mask) is x
    with pytest.raises(NonFiniteError, match="1 of 4"):
        check_finite("logprobs", x, torch.tensor([[1, 1, 1], [1, 0, 0]]))


def test_nan_in_masked_slots_never_reaches_a_loss():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    poison = torch.tensor([[0.0, 0.0, NAN, INF], [0.0, -INF, NAN, NAN]])
    logprobs = torch.tensor([[-1.0, -2.0, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0]]) + poison
    old = torch.tensor([[-1.1, -1.9, 0.0, 0.0], [-0.4, 0.0, 0.0, 0.0]]) + poison
    advantages = torch.tensor([[0.5, -0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]) + poison
    values, returns = advantages.clone(), advantages * 2
    pg, _ = ppo_policy_loss(logprobs, old, advantages, mask, 0.2)
    vf, _ = value_loss(values, old, returns, mask, 0.2)
    for name, value in {"policy": pg, "value": vf, "mean": masked_mean(logprobs, mask),
                        "whiten": masked_whiten(advantages, mask).sum()}.items():
        assert torch.isfinite(value), name
    seq = masked_sum(logprobs, mask, dim=1)
    loss, _, _ = dpo_loss(seq[:1], seq[1:], seq[:1] * 0.9, seq[1:] * 0.9, 0.1)
    assert torch.isfinite(loss)



def ppo_cfg(ckpt, out, *overrides):
    return compose_config("stage=ppo", "ppo.iterations=3", f"sft.checkpoint={ckpt / 'sft'}",
                          f"rm.checkpoint={ckpt / 'rm'}", f"dpo.checkpoint={ckpt / 'dpo'}", *overrides,
                          output_dir=out)


# where each kind of learner builds its experience: PPO's (with the critic) and the critic-free one
EXPERIENCE = {"ppo": (ppo_stage, "make_experience"), "grpo": (critic_free_stage, "make_critic_free_experience")}


def nan_score_from_iteration(monkeypatch, first_bad: int, learner: str = "ppo"):
    """The reward model scores NaN from RL iteration `first_bad` on."""
    module, name = EXPERIENCE[learner]
    original, calls = getattr(module, name), []

    class NaNScores:
        def __init__(self, model):
            self.model = model

        def score(self, **batch):
            return self.model.score(**batch) * NAN

    def poisoned(rollout, *, reward_model, **kwargs):
        calls.append(1)
        if len(calls) >= first_bad:
            reward_model = NaNScores(reward_model)
        return original(rollout, reward_model=reward_model, **kwargs)
    monkeypatch.setattr(module, name, poisoned)


def test_nan_reward_stops_ppo_naming_step_tensor_and_last_good_checkpoint(upstream, tmp_path, monkeypatch):
    nan_score_from_iteration(monkeypatch, 2)
    with pytest.raises(NonFiniteError, match=r"score is not finite at step 2.*last good checkpoint: .*ppo-resume"):
        train(ppo_cfg(upstream, tmp_path))
    assert not (tmp_path / "checkpoints" / "ppo").exists()  # nothing trained on NaN was published


@pytest.mark.parametrize("learner", list(EXPERIENCE))
def test_nan_reward_with_skip_drops_the_rollout_and_trains_on(upstream, tmp_path, monkeypatch, caplog, learner):
    """The guard lives in the loop every learner shares: PPO and a critic-free learner (GRPO) alike."""
    nan_score_from_iteration(monkeypatch, 2, learner)
    with caplog.at_level(logging.WARNING):
        train(ppo_cfg(upstream, tmp_path, "on_nonfinite=skip", f"algo={learner}",
                      f"algo.samples_per_prompt={1 if learner == 'ppo' else 2}"))
    assert "skipping the batch: score is not finite at step 2" in caplog.text
    weights = load_file(str(tmp_path / "checkpoints" / "ppo" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_nan_policy_while_sampling_stops_or_skips_the_iteration(upstream, tmp_path, monkeypatch, caplog, policy):
    """A policy whose sampling distribution is NaN (here: a NaN temperature from iteration 2 on) is
    named, with its step, like any other tensor (torch.multinomial used to end in a traceback)."""
    from rto.stages import learner as learner_stage
    original, calls = learner_stage.sample_responses, []

    def poisoned(model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, temperature, *args, **kwargs):
        calls.append(1)
        nan = float("nan") if len(calls) == 2 else temperature
        return original(model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, nan, *args, **kwargs)
    monkeypatch.setattr(learner_stage, "sample_responses", poisoned)
    message = "the policy's sampling distribution is not finite at step 2"
    if policy == "raise":
        with pytest.raises(NonFiniteError, match=message):
            train(ppo_cfg(upstream, tmp_path))
        return
    with caplog.at_level(logging.WARNING):
        train(ppo_cfg(upstream, tmp_path, "on_nonfinite=skip"))
    assert f"skipping the batch: {message}" in caplog.text and len(calls) == 3
    weights = load_file(str(tmp_path / "checkpoints" / "ppo" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_nan_policy_on_the_validation_prompts_stops_without_suggesting_skip(upstream, tmp_path, monkeypatch):
    """The validation curve samples outside a training batch: on_nonfinite=skip cannot skip it, so the
    message names the validation prompts and does not offer the switch (decided over all ranks)."""
    from rto.rl import validation
    original, calls = validation.sample_policy, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        return original(*args, **{**kwargs, "temperature": float("nan") if len(calls) == 2 else kwargs["temperature"]})
    monkeypatch.setattr(validation, "sample_policy", poisoned)
    with pytest.raises(NonFiniteError, match=r"on the validation prompts \(after iteration 1\) is not finite") as err:
        train(ppo_cfg(upstream, tmp_path, "on_nonfinite=skip", "ppo.val_every=1"))
    assert "on_nonfinite=skip" not in str(err.value) and not err.value.skippable and len(calls) == 2


def test_nan_loss_stops_sft_at_its_step(tmp_path, monkeypatch):
    original = sft_stage.policy_logprobs

    def poisoned(model, batch):
        logprobs, logits = original(model, batch)
        return logprobs + NAN, logits
    monkeypatch.setattr(sft_stage, "policy_logprobs", poisoned)
    with pytest.raises(NonFiniteError, match=r"sft/loss is not finite at step 0.*no checkpoint of this stage"):
        train(compose_config("stage=sft", output_dir=tmp_path))
