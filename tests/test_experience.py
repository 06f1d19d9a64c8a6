"""`make_experience`'s wiring: which model's log-probs go where (at the sampling temperature), the
score normalised then clamped, the critic on the rewards' scale, Semi-RTO's segment ends."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rto.algos.advantages import RunningMoments, gae
from rto.algos.masked import masked_whiten
from rto.algos.rewards import dpo_token_rewards, semi_token_rewards, sentence_rewards, token_rewards
from rto.models.forward import response_forward
from rto.models.scalar_head import ScalarHeadModel
from rto.rl.experience import make_experience
from rto.rl.rollout import Rollout, sample_responses
from rto.rl.segments import WindowSegments

PAD, EOS, VOCAB = 0, 1, 12
RAW_SCORES = torch.tensor([-40.0, -1.0, 0.5, 2.0, 60.0, 3.0])


def lm(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=PAD, eos_token_id=EOS)
    return LlamaForCausalLM(config).eval()


class FixedScores:
    """A reward model whose scores are known in advance."""

    def __init__(self, scores: torch.Tensor):
        self.scores = scores

    def score(self, prompt_ids, prompt_mask, response_ids, response_mask, prompt_text=None):
        return self.scores.clone()


class ScoreEcho:
    """A critic that knows each row's raw RM score at every token (a perfect critic for the
    sentence reward without KL, gamma = lam = 1), in raw score units as a critic from the RM is."""

    def __init__(self, scores: torch.Tensor):
        self.scores = scores

    def response_values(self, prompt_ids, prompt_mask, response_ids, response_mask):
        return self.scores.unsqueeze(1).expand(response_ids.shape).clone()


def rollout(actor, temperature: float, keep_logprobs: bool) -> Rollout:
    prompt_ids = torch.tensor([[PAD, 2, 3], [4, 5, 6], [PAD, PAD, 7], [2, 8, 9], [PAD, 3, 3], [5, 5, 4]])
    prompt_mask = (prompt_ids != PAD).long()
    ids, mask, logprobs = sample_responses(actor, prompt_ids, prompt_mask, 7, EOS, PAD, temperature,
                                           torch.Generator().manual_seed(0), return_logprobs=True)
    return Rollout(prompt_ids, prompt_mask, ids, mask, ["p"] * 6, logprobs=logprobs if keep_logprobs else None)


def tempered_logprobs(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) of each response token, from one plain forward (masked slots 0)."""
    logits = response_forward(model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                              batch["response_mask"])
    logp = torch.log_softmax(logits / temperature, dim=-1).gather(2, batch["response_ids"].unsqueeze(2)).squeeze(2)
    return logp * batch["response_mask"]


def config(make_cfg, *overrides: str):
    cfg = make_cfg(*overrides)
    return cfg.ppo, cfg.reward, cfg.beta


@pytest.mark.parametrize("keep_sampler_logprobs", [True, False])
def test_each_model_feeds_its_own_slot_at_the_sampling_temperature(make_cfg, keep_sampler_logprobs):
    ppo_cfg, reward_cfg, beta = config(make_cfg, "reward=token", "ppo.temperature=0.7", "reward.score_clip=1.5",
                                       "reward.dpo_clip=0.02", "ppo.lam=0.9")
    actor, reference, dpo, critic_lm = lm(0), lm(1), lm(2), lm(3)
    critic = ScalarHeadModel.from_causal_lm(critic_lm).eval()
    moments = RunningMoments()
    ro = rollout(actor, 0.7, keep_sampler_logprobs)
    exp = make_experience(ro, actor=actor, critic=critic, reference=reference, reward_model=FixedScores(RAW_SCORES),
                          dpo_policy=dpo, reward_cfg=reward_cfg, beta=beta, ppo_cfg=ppo_cfg, score_moments=moments)
    batch, mask = exp.batch(), exp.response_mask
    close = lambda a, b: torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)  # noqa: E731
    actor_lp, ref_lp, dpo_lp = (tempered_logprobs(m, batch, 0.7) for m in (actor, reference, dpo))
    close(exp.logprobs, actor_lp)
    if keep_sampler_logprobs:
        assert exp.logprobs is ro.logprobs  # no second forward where the sampler's numbers are exact
    close(exp.ref_logprobs, ref_lp)
    close(exp.dpo_rewards, dpo_token_rewards(dpo_lp, ref_lp, mask, reward_cfg.dpo_scale, 0.02))
    # normalise, then clamp: the clamp is in normalised units and the statistics saw the raw scores
    assert moments.mean == pytest.approx(float(RAW_SCORES.mean()), rel=1e-6)
    normalised = (RAW_SCORES - RAW_SCORES.mean()) / (RAW_SCORES.std(unbiased=False) + moments.eps)
    close(exp.score, normalised.clamp(-1.5, 1.5))
    assert exp.score.abs().max() == 1.5 and (exp.score.abs() < 1.5).any()
    close(exp.values, (critic.response_values(**batch) - moments.mean) / (moments.std + moments.eps))
    rewards = token_rewards(exp.score, actor_lp, ref_lp, dpo_lp, mask, beta, reward_cfg.dpo_scale,
                            reward_cfg.rm_scale, 0.02)
    close(exp.rewards, rewards)
    advantages, returns = gae(rewards, exp.values, mask, ppo_cfg.gamma, 0.9)
    close(exp.returns, returns)
    close(exp.advantages, masked_whiten(advantages, mask))


def test_a_critic_that_predicts_the_score_gets_zero_advantages(make_cfg):
    """The critic starts from the reward model, in raw score units; the rewards carry the normalised
    score. Both go through one normalisation, so a critic that knows the score has nothing to correct."""
    ppo_cfg, reward_cfg, beta = config(make_cfg, "reward=sentence", "ppo.lam=1.0", "ppo.gamma=1.0",
                                       "ppo.whiten_advantages=false", "reward.score_clip=null")
    actor = lm(0)
    moments = RunningMoments()
    moments.update(torch.tensor([5.0, 9.0, 13.0]))  # earlier rollouts: the running statistics are not this batch's
    exp = make_experience(rollout(actor, 1.0, True), actor=actor, critic=ScoreEcho(RAW_SCORES), reference=actor,
                          reward_model=FixedScores(RAW_SCORES), dpo_policy=None, reward_cfg=reward_cfg, beta=beta,
                          ppo_cfg=ppo_cfg, score_moments=moments)
    mask = exp.response_mask.bool()
    assert exp.rewards.abs().sum() > 0
    torch.testing.assert_close(exp.returns[mask], exp.values[mask], atol=1e-6, rtol=1e-6)
    assert exp.advantages[mask].abs().max() < 1e-6


def test_semi_rewards_close_segments_where_the_segmenter_says(make_cfg):
    ppo_cfg, reward_cfg, beta = config(make_cfg, "reward=semi_window", "reward.segment_len=2")
    actor, reference, dpo = lm(0), lm(1), lm(2)
    ro = rollout(actor, 1.0, True)
    kwargs = dict(actor=actor, critic=ScoreEcho(RAW_SCORES), reference=reference,
                  reward_model=FixedScores(RAW_SCORES), dpo_policy=dpo, reward_cfg=reward_cfg, beta=beta,
                  ppo_cfg=ppo_cfg, score_moments=None)
    exp = make_experience(ro, segments=WindowSegments(2), **kwargs)
    mask = exp.response_mask
    ends = torch.zeros_like(mask, dtype=torch.bool)
    ends[:, 1::2] = True
    dpo_lp = tempered_logprobs(dpo, exp.batch())
    expected = semi_token_rewards(exp.score, exp.logprobs, exp.ref_logprobs, dpo_lp, mask, beta, reward_cfg.dpo_scale,
                                  reward_cfg.rm_scale, ends & mask.bool())
    torch.testing.assert_close(exp.rewards, expected)
    # another segmenter moves the rewards: the one passed in is the one used
    every_token = make_experience(ro, segments=lambda ids, m: m.bool(), **kwargs)
    torch.testing.assert_close(every_token.rewards, token_rewards(exp.score, exp.logprobs, exp.ref_logprobs, dpo_lp,
                                                                  mask, beta, reward_cfg.dpo_scale, reward_cfg.rm_scale))
    assert not torch.allclose(every_token.rewards, exp.rewards)


def test_sentence_reward_reads_no_dpo_model(make_cfg):
    ppo_cfg, reward_cfg, beta = config(make_cfg, "reward=sentence", "ppo.normalize_rewards=false")
    actor, reference = lm(0), lm(1)
    exp = make_experience(rollout(actor, 1.0, True), actor=actor, critic=ScoreEcho(RAW_SCORES), reference=reference,
                          reward_model=FixedScores(RAW_SCORES), dpo_policy=None, reward_cfg=reward_cfg, beta=beta,
                          ppo_cfg=ppo_cfg)
    assert exp.dpo_rewards is None
    torch.testing.assert_close(exp.rewards, sentence_rewards(RAW_SCORES.clamp(-10, 10), exp.logprobs, exp.ref_logprobs,
                                                             exp.response_mask, beta))
    torch.testing.assert_close(exp.values, ScoreEcho(RAW_SCORES).response_values(**exp.batch()))  # raw: no normalisation
