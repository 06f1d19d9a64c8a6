"""`ppo.micro_batch_size`: a minibatch's gradient accumulated over micro-batches, and the frozen
forwards run in slices, give the parameters the unsplit computation gives, for PPO with its critic
and for a group learner, through the real entry point; bad values are refused before training."""

from __future__ import annotations

import inspect

import pytest
import torch
from safetensors.torch import load_file

from rto.config import ConfigError, validate
from rto.main import train
from rto.rl import experience as experience_code
from rto.rl.experience import Experience, in_micro_batches
from rto.stages import learner as learner_code
from rto.stages import update as update_code
from tests.conftest import compose_config

# SGD without gradient clipping: the step is proportional to the gradient, so a gradient of the
# wrong scale (a normaliser per micro-batch) shows in the parameters; Adam's and clipping's
# normalisations would hide it. The rates move the weights by ~1e-3; fp32 rounding of the split
# forwards leaves them within a couple of float32 ulps of the unsplit run's (1e-8 for most weights; a
# norm weight near 1 came out one ulp, 1.2e-7, apart on one CPU: so 2 ulps relative, 1e-7 absolute)
PLAIN_STEPS = ("ppo.actor_optimizer._target_=torch.optim.SGD", "ppo.critic_optimizer._target_=torch.optim.SGD",
               "ppo.actor_optimizer.lr=0.5", "ppo.critic_optimizer.lr=0.001", "ppo.max_grad_norm=null")
LEARNER_RUNS = {
    "ppo-token": ("algo=ppo", "reward=token"),  # a critic, and the DPO model's forward too
    "grpo-sentence": ("algo=grpo", "reward=sentence", "algo.samples_per_prompt=4"),  # groups, the KL as a loss
}



def rl_weights(upstream, out, *overrides) -> dict[str, torch.Tensor]:
    """One RL iteration (rollout of 8, 2 epochs over minibatches of 4) from the upstream stages; the
    actor's weights after it, and the critic's where there is one."""
    train(compose_config("stage=ppo", "ppo.iterations=1", "ppo.val_every=null", *PLAIN_STEPS,
                         *(f"{stage}.checkpoint={upstream / stage}" for stage in ("sft", "rm", "dpo")),
                         *overrides, output_dir=out))
    weights = {f"actor/{k}": v for k, v in load_file(str(out / "checkpoints" / "ppo" / "model.safetensors")).items()}
    if (out / "checkpoints" / "critic").exists():
        for name in ("model.safetensors", "scalar_head.safetensors"):
            weights.update({f"critic/{k}": v for k, v in load_file(str(out / "checkpoints" / "critic" / name)).items()})
    return weights


@pytest.fixture
def unequal_lengths(monkeypatch):
    """Every rollout's responses cut to unequal lengths (row r keeps its first 1 + 5r mod R tokens): the
    tiny upstream policy samples no early EOS, so every response would run to the limit, and
    micro-batches of equal rows would hold equal shares of the tokens (weighting them by rows instead
    of tokens would then go unnoticed). Both runs of a test cut the same rows the same way."""
    real = learner_code.sample_responses
    lengths_seen = []

    def cut(*args, **kwargs):
        ids, mask, *logprobs = real(*args, **kwargs)
        rows, width = ids.shape
        lengths = 1 + (5 * torch.arange(rows)) % width
        keep = mask.bool() & (torch.arange(width) < lengths[:, None])
        lengths_seen.append(keep.sum(dim=1).tolist())
        pad_id = inspect.signature(real).bind(*args, **kwargs).arguments["pad_id"]
        return (ids.masked_fill(~keep, pad_id), keep.to(mask.dtype),
                *(lp.masked_fill(~keep, 0.0) for lp in logprobs))  # masked slots' log-probs are exactly 0

    monkeypatch.setattr(learner_code, "sample_responses", cut)
    return lengths_seen


@pytest.fixture
def forward_rows(monkeypatch):
    """The most rows any actor / frozen-model forward of the experience and of the update was given."""
    most = {"experience": 0, "update": 0}
    for name, module in (("experience", experience_code), ("update", update_code)):
        def spy(model, batch, *args, _name=name, _forward=module.policy_logprobs, **kwargs):
            most[_name] = max(most[_name], batch["response_ids"].shape[0])
            return _forward(model, batch, *args, **kwargs)
        monkeypatch.setattr(module, "policy_logprobs", spy)
    return most


@pytest.mark.parametrize("learner", sorted(LEARNER_RUNS))
def test_micro_batches_give_the_parameters_of_the_whole_minibatch(upstream, tmp_path, learner, forward_rows,
                                                                  unequal_lengths):
    whole = rl_weights(upstream, tmp_path / "whole", *LEARNER_RUNS[learner])
    assert forward_rows == {"experience": 8, "update": 4}  # the rollout, a minibatch
    assert len(set(unequal_lengths[0])) > 2  # unequal responses, so token and row shares differ
    forward_rows.update(experience=0, update=0)
    # 3 rows: a minibatch of 4 splits 3 + 1 (unequal token counts), the rollout of 8 into 3 + 3 + 2
    micro = rl_weights(upstream, tmp_path / "micro", *LEARNER_RUNS[learner], "ppo.micro_batch_size=3")
    assert forward_rows == {"experience": 3, "update": 3}
    assert unequal_lengths[0] == unequal_lengths[1]  # both runs' rollouts cut alike
    start = {f"actor/{k}": v for k, v in load_file(str(upstream / "sft" / "model.safetensors")).items()}
    moved = max(float((whole[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-3  # the iteration changed the policy: there is something to compare
    assert whole.keys() == micro.keys() and (learner != "ppo-token" or any(k.startswith("critic/") for k in whole))
    for name in whole:
        torch.testing.assert_close(micro[name], whole[name], rtol=2.5e-7, atol=1e-7, msg=name)


def test_micro_batches_are_consecutive_slices_that_cover_the_minibatch():
    rows = torch.arange(5)
    exp = Experience(*(rows.unsqueeze(1).expand(5, 2) for _ in range(8)))
    assert [m.response_ids[:, 0].tolist() for m in exp.micro_batches(2)] == [[0, 1], [2, 3], [4]]
    for size in (None, 5, 8):  # off, or not smaller than the minibatch: the minibatch itself
        (only,) = exp.micro_batches(size)
        assert only is exp


def test_frozen_forwards_run_on_slices_in_order():
    seen = []
    batch = {"response_ids": torch.arange(8).unsqueeze(1), "prompt_text": list("abcdefgh"), "unused": None}

    def forward(b):
        seen.append("".join(b["prompt_text"]))
        return b["response_ids"] * 2
    assert torch.equal(in_micro_batches(forward, batch, 3), batch["response_ids"] * 2)
    assert seen == ["abc", "def", "gh"]


@pytest.mark.parametrize("value, message", [
    (-1, "ppo.micro_batch_size must be null or an integer >= 1, got -1"),
    (2.5, "ppo.micro_batch_size must be null or an integer >= 1, got 2.5"),
    (5, "ppo.micro_batch_size (5) must not exceed ppo.minibatch_size (4)"),
])
def test_bad_micro_batch_sizes_are_refused(make_cfg, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(make_cfg(f"ppo.micro_batch_size={value}"))
    validate(make_cfg("ppo.micro_batch_size=3"))  # need not divide the minibatch (4)


def test_a_bad_evaluation_micro_batch_size_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"eval.micro_batch_size must be null or an integer >= 1, got 0"):
        validate(make_cfg("eval.micro_batch_size=0"))
    validate(make_cfg("eval.micro_batch_size=3"))
