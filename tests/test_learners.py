"""The learners (`algo=ppo|reinforce_pp|rloo|grpo`) through the real experience code and the real
entry point: every reward variant meets every learner's baseline, the KL goes where `algo.kl_in`
says, each learner's loss decreases on a fixed batch, k samples per prompt stay together and are
counted as sampled responses, critic-free learners have no critic anywhere."""

from __future__ import annotations

import pytest
import torch

from rto.algos.advantages import returns_to_go, rloo_advantages
from rto.algos.masked import masked_whiten
from rto.algos.rewards import REWARDS, compute_rewards
from rto.config import ConfigError, validate
from rto.main import train
from rto.recipes.rl import LEARNERS
from rto.rl.experience import make_critic_free_experience
from rto.rl.segments import WindowSegments
from rto.stages import learner as learner_stage
from rto.stages import update as update_stage
from tests.conftest import compose_config
from tests.csv_log import logged
from tests.test_experience import RAW_SCORES, FixedScores, lm, rollout

CRITIC_FREE = [name for name, learner in LEARNERS.items() if not learner.uses_critic]


def critic_free_experience(cfg, ro, actor, reference, dpo):
    algo = cfg.algo
    return make_critic_free_experience(
        ro, baseline=LEARNERS[algo.name].baseline(algo), whiten=algo.whiten_advantages, actor=actor,
        reference=reference, reward_model=FixedScores(RAW_SCORES), dpo_policy=dpo, reward_cfg=cfg.reward,
        beta=cfg.beta, ppo_cfg=cfg.ppo, segments=WindowSegments(2), kl_in_reward=algo.kl_in == "reward")


@pytest.mark.parametrize("algo", CRITIC_FREE)
@pytest.mark.parametrize("reward", sorted(set(REWARDS) - {"semi"}))  # semi = semi_window's code with delimiters
def test_every_reward_variant_meets_every_critic_free_learner(make_cfg, algo, reward):
    """Per-token rewards (KL included unless in the loss) -> per-token returns-to-go -> the learner's
    baseline, on 6 rollout rows = 2 groups of k = 3."""
    cfg = make_cfg(f"algo={algo}", f"reward={reward}", "algo.samples_per_prompt=3", "ppo.gamma=0.9")
    actor, reference, dpo = lm(0), lm(1), lm(2)
    ro = rollout(actor, 1.0, True)
    exp = critic_free_experience(cfg, ro, actor, reference, dpo)
    mask = exp.response_mask
    assert (exp.dpo_rewards is not None) == REWARDS[reward].uses_dpo
    returns = returns_to_go(exp.rewards, mask, 0.9)
    torch.testing.assert_close(exp.returns, returns)
    expected = LEARNERS[algo].baseline(cfg.algo)(returns, mask)
    if cfg.algo.whiten_advantages:
        expected = masked_whiten(expected, mask)
    torch.testing.assert_close(exp.advantages, expected)
    assert torch.isfinite(exp.advantages).all() and (exp.advantages[~mask.bool()] == 0).all()
    assert exp.values is None  # no critic


@pytest.mark.parametrize("kl_in", ["reward", "loss"])
def test_grpo_kl_in_reward_or_in_loss(make_cfg, kl_in):
    cfg = make_cfg("algo=grpo", f"algo.kl_in={kl_in}", "reward=sentence", "algo.samples_per_prompt=3",
                   "ppo.normalize_rewards=false")
    actor, reference = lm(0), lm(1)
    exp = critic_free_experience(cfg, rollout(actor, 1.0, True), actor, reference, None)
    mask = exp.response_mask.bool()
    kl_part = exp.rewards - compute_rewards("sentence", score=exp.score, logprobs=exp.logprobs,
                                            ref_logprobs=exp.ref_logprobs, mask=exp.response_mask, beta=0.0)
    expected = -cfg.beta * (exp.logprobs - exp.ref_logprobs)
    if kl_in == "reward":
        torch.testing.assert_close(kl_part[mask], expected[mask])
    else:
        assert (kl_part[mask] == 0).all()


def test_group_baseline_branches_reach_the_experience(make_cfg):
    """`algo.group_baseline=episode|position` with RTO's token reward: different advantages, each the
    pure function's."""
    actor, reference, dpo = lm(0), lm(1), lm(2)
    ro = rollout(actor, 1.0, True)
    out = {}
    for baseline in ("episode", "position"):
        cfg = make_cfg("algo=rloo", "reward=token", "algo.samples_per_prompt=2", f"algo.group_baseline={baseline}")
        exp = critic_free_experience(cfg, ro, actor, reference, dpo)
        torch.testing.assert_close(exp.advantages, rloo_advantages(exp.returns, exp.response_mask, 2, baseline))
        out[baseline] = exp.advantages
    assert not torch.allclose(out["episode"], out["position"])


# ---------------------------------------------------------------- through the entry point



def rl_stage(ckpt, out, *overrides):
    cfg = compose_config("stage=ppo", "logger=csv", f"sft.checkpoint={ckpt / 'sft'}", f"rm.checkpoint={ckpt / 'rm'}",
                         f"dpo.checkpoint={ckpt / 'dpo'}", *overrides, output_dir=out)
    train(cfg)
    return cfg


@pytest.fixture
def spy_losses(monkeypatch):
    """Each minibatch's policy loss, and its KL loss term where there is one, in call order."""
    seen = {"policy": [], "kl": []}
    policy_loss, kl_loss = update_stage.ppo_policy_loss, update_stage.kl_loss

    def policy_spy(*args):
        loss, stats = policy_loss(*args)
        seen["policy"].append(float(loss.detach()))
        return loss, stats

    def kl_spy(*args):
        loss = kl_loss(*args)
        seen["kl"].append(float(loss.detach()))
        return loss

    monkeypatch.setattr(update_stage, "ppo_policy_loss", policy_spy)
    monkeypatch.setattr(update_stage, "kl_loss", kl_spy)
    return seen


@pytest.mark.parametrize("algo", list(LEARNERS))
def test_each_learner_loss_decreases_on_a_fixed_batch(upstream, tmp_path, spy_losses, algo):
    """One rollout (8 responses), 6 passes over it as one minibatch: the learner's objective (policy
    loss, plus beta * KL for GRPO's loss term) goes down."""
    epochs = 6
    cfg = rl_stage(upstream, tmp_path, f"algo={algo}", "reward=token", "ppo.iterations=1", f"ppo.ppo_epochs={epochs}",
                   "ppo.minibatch_size=8", "ppo.val_every=null", "algo.samples_per_prompt=2")
    policy, kl = spy_losses["policy"], spy_losses["kl"]
    assert len(policy) == epochs
    objective = [p + cfg.beta * k for p, k in zip(policy, kl)] if kl else policy
    assert bool(kl) == (cfg.algo.kl_in == "loss")
    assert objective[-1] < objective[0] - 1e-3, objective
    assert logged(tmp_path, "ppo/actor_grad_norm")
    if algo == "ppo":
        assert logged(tmp_path, "ppo/value_loss") and logged(tmp_path, "ppo/critic_grad_norm")
    else:
        assert not logged(tmp_path, "ppo/value_loss") and not logged(tmp_path, "ppo/explained_variance")
        assert not logged(tmp_path, "ppo/critic_grad_norm")  # no critic, no second optimizer


def test_group_samples_stay_together_and_count_as_responses(upstream, tmp_path, monkeypatch):
    """GRPO, k = 4, 8 sampled responses per iteration: 2 prompts, each sampled 4 times in consecutive
    rows; the validation curve counts responses (8 per iteration), not prompts."""
    rows = []
    sample = learner_stage.sample_responses

    def spy(model, prompt_ids, *args, **kwargs):
        rows.append(prompt_ids.clone())
        return sample(model, prompt_ids, *args, **kwargs)
    monkeypatch.setattr(learner_stage, "sample_responses", spy)
    rl_stage(upstream, tmp_path, "algo=grpo", "reward=sentence", "ppo.iterations=2", "ppo.rollout_batch_size=8",
             "ppo.minibatch_size=4", "ppo.val_every=1")
    assert len(rows) == 2
    for ids in rows:
        assert ids.shape[0] == 8
        groups = ids.view(2, 4, -1)
        assert (groups == groups[:, :1]).all()  # every group: one prompt, 4 times
    assert logged(tmp_path, "val/sampled_responses") == [0.0, 8.0, 16.0]
    assert logged(tmp_path, "ppo/kl_coef") == [pytest.approx(0.1)] * 2


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_grpo_and_rloo_iterations_run_the_same_forwards(upstream, tmp_path, monkeypatch, algo):
    """The work of one critic-free iteration, the same for GRPO (KL in the loss) and RLOO (KL in the
    reward), what `benchmarks/vs_trl.py --only grpo rloo` compares with TRL: one sampling pass, then one
    reference forward and one reward-model forward without gradient, one policy forward with gradient
    per minibatch, and no pi_old forward (the sampler's fp32 log-probs stand in)."""
    from rto.models.retokenize import RewardScorer
    from rto.rl import experience as experience_module
    from rto.stages import update as update_stage  # the minibatch update: its policy forward

    calls = []

    def spy(where, read):
        def logprobs(model, *args, **kwargs):
            trainable = any(p.requires_grad for p in model.parameters())
            calls.append((where, "policy" if trainable else "frozen", torch.is_grad_enabled()))
            return read(model, *args, **kwargs)
        return logprobs

    def sample(*args, **kwargs):
        calls.append(("rollout", "policy", False))  # the sampler runs without gradient itself
        return sample_responses(*args, **kwargs)

    def score(self, *args, **kwargs):
        calls.append(("experience", "reward_model", torch.is_grad_enabled()))
        return rm_score(self, *args, **kwargs)

    sample_responses, rm_score = learner_stage.sample_responses, RewardScorer.score
    monkeypatch.setattr(experience_module, "policy_logprobs", spy("experience", experience_module.policy_logprobs))
    monkeypatch.setattr(update_stage, "policy_logprobs", spy("update", update_stage.policy_logprobs))
    monkeypatch.setattr(learner_stage, "sample_responses", sample)
    monkeypatch.setattr(RewardScorer, "score", score)
    rl_stage(upstream, tmp_path, f"algo={algo}", "reward=sentence", "ppo.iterations=2", "ppo.rollout_batch_size=8",
             "ppo.minibatch_size=8", "ppo.ppo_epochs=1", "ppo.val_every=null", "algo.samples_per_prompt=4")
    iteration = [("rollout", "policy", False), ("experience", "frozen", False),
                 ("experience", "reward_model", False), ("update", "policy", True)]
    assert calls == iteration * 2


@pytest.mark.parametrize("overrides, message", [
    (("algo=rloo", "algo.samples_per_prompt=1"), "algo.samples_per_prompt must be >= 2"),
    (("algo=grpo", "ppo.rollout_batch_size=6"), "must be a multiple of algo.samples_per_prompt"),
    (("algo=grpo", "algo.kl_in=both"), "algo.kl_in must be one of reward, loss"),
    (("algo=rloo", "algo.group_baseline=token"), "algo.group_baseline must be one of episode, position"),
    (("algo.name=a2c",), "algo.name must be one of ppo, reinforce_pp, rloo, grpo"),
    (("kl_ctl=adaptive", "kl_ctl.horizon=0"), "kl_ctl.horizon must be a number > 0"),
    (("dpo=simpo", "reward=token"), "reference-free SimPO model"),
])
def test_bad_learner_config_is_refused_naming_the_key(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides))


def test_simpo_as_a_baseline_row_is_accepted(make_cfg):
    validate(make_cfg("dpo=simpo", "eval.policies=[sft,dpo]"))
    validate(make_cfg("dpo=ipo", "reward=token"))  # IPO's model has RTO's log pi/pi_ref reward


def test_simpo_trains_in_the_dpo_stage_without_a_reference_and_is_labelled(upstream, tmp_path, monkeypatch):
    """`dpo=simpo eval.policies=[sft,dpo]`: the SimPO row of the comparison. Reference-free: no
    reference log-probs are computed (neither precomputed nor per step)."""
    from rto.recipes import dpo as dpo_recipe
    from rto.stages import dpo as dpo_stage

    calls = []
    sequence_logps = dpo_stage.sequence_logps
    monkeypatch.setattr(dpo_recipe, "with_reference_logps", lambda *a, **k: calls.append("precompute"))
    monkeypatch.setattr(dpo_stage, "sequence_logps", lambda model, *a: calls.append(model) or sequence_logps(model, *a))
    cfg = compose_config("dpo=simpo", "eval.policies=[sft,dpo]", "logger=csv", f"sft.checkpoint={upstream / 'sft'}",
                         f"rm.checkpoint={upstream / 'rm'}", output_dir=tmp_path)
    train(cfg)
    assert cfg.dpo.loss == "simpo" and cfg.dpo.beta == 2.0
    assert "precompute" not in calls and calls and all(model is calls[0] for model in calls)  # the policy only
    assert logged(tmp_path, "dpo/loss")
    table = (tmp_path / "eval_table.md").read_text()
    assert "| SimPO |" in table and "| DPO |" not in table
