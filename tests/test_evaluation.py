"""Evaluation: each policy draws from its own reproducible stream, ties are reported, every model
runs with dropout off and the KL is that of the tempered distributions actually sampled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from rto import evaluation
from rto.data import encode_prompts, load_data
from rto.evaluation import BASELINE, Samples, evaluate, sample_policy, stream_seed, summarize
from rto.models.factory import build_policy
from rto.models.forward import response_forward
from rto.models.retokenize import RewardScorer
from rto.models.scalar_head import ScalarHeadModel
from rto.rl.rollout import sample_responses


@pytest.fixture
def setup(make_cfg):
    cfg = make_cfg("eval.n_prompts=16", "eval.batch_size=8", "eval.max_new_tokens=8")
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_policy(cfg.model, data.tokenizer)
    scorer = RewardScorer(ScalarHeadModel.from_causal_lm(model), data.encoder, data.tokenizer)
    decode = lambda ids, mask: [data.tokenizer.decode(r[m.bool()].tolist()) for r, m in zip(ids, mask)]  # noqa: E731
    return cfg, data, model, scorer, decode


def test_stream_seeds_are_stable_and_differ_by_policy():
    assert stream_seed(1234, "sft") == stream_seed(1234, "sft")
    seeds = {stream_seed(1234, name) for name in ("sft", "dpo", "policy", BASELINE)} | {stream_seed(1, "sft")}
    assert len(seeds) == 5 and all(0 <= s < 2**63 for s in seeds)


def test_each_policy_draws_its_own_stream_and_ties_are_reported(setup):
    """Two copies of one model under different names: with one shared stream they would draw the same
    tokens and tie on every prompt; with their own streams they draw like independent samples."""
    cfg, data, model, scorer, decode = setup
    prompts = data.test_prompts[:16]
    args = (model, scorer, prompts, data.encoder, cfg.eval, decode, data.gold)
    results, samples = evaluate({"sft": model, "policy": model}, *args)
    assert samples["sft"].responses != samples["policy"].responses
    for name in ("sft", "policy"):
        assert 0.0 <= results[name]["tie_rate"] < 1.0
        assert abs(results[name]["win_rate"] - 0.5) <= 3 * results[name]["win_rate_stderr"] + 1e-9
    again, _ = evaluate({"sft": model, "policy": model}, *args)
    assert again == results  # reproducible: the streams come from eval.seed and the names


def test_win_and_tie_rates_by_hand():
    def samples(gold):
        n = len(gold)
        return Samples(["p"] * n, ["r"] * n, np.zeros(n), np.zeros(n), np.ones(n), np.asarray(gold, dtype=float))

    out = summarize(samples([3, 1, 2, 2]), samples([1, 1, 5, 2]))
    assert out["win_rate"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert out["tie_rate"] == 0.5


def test_a_model_in_train_mode_is_evaluated_with_dropout_off(make_cfg):
    """GPT-2 from config (dropout 0.1), in train mode as built: against itself as the reference its
    KL is exactly 0, and its samples do not depend on the mode it arrived in."""
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.model.arch = "gpt2"
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_policy(cfg.model, data.tokenizer)
    assert model.training and model.config.resid_pdrop > 0
    scorer = RewardScorer(ScalarHeadModel.from_causal_lm(model), data.encoder, data.tokenizer).train()
    kwargs = dict(batch_size=8, max_new_tokens=6, temperature=1.0, seed=0, decode=lambda ids, mask: [""] * len(ids),
                  gold=None)
    trained_mode = sample_policy(model, model, scorer, data.test_prompts[:8], data.encoder, **kwargs)
    assert np.abs(trained_mode.kl).max() == 0.0
    eval_mode = sample_policy(model.eval(), model, scorer.eval(), data.test_prompts[:8], data.encoder, **kwargs)
    np.testing.assert_array_equal(trained_mode.rm_score, eval_mode.rm_score)


def test_kl_is_that_of_the_tempered_distributions_sampled(setup):
    cfg, data, model, scorer, decode = setup
    torch.manual_seed(1)
    reference = build_policy(cfg.model, data.tokenizer).eval()
    prompts = data.test_prompts[:8]
    got = sample_policy(model, reference, scorer, prompts, data.encoder, batch_size=8, max_new_tokens=6,
                        temperature=0.7, seed=5, decode=decode, gold=None)
    batch = encode_prompts(data.encoder, prompts)
    tok = data.tokenizer
    ids, mask = sample_responses(model, batch["prompt_ids"], batch["prompt_mask"], 6, tok.eos_token_id,
                                 tok.pad_token_id, 0.7, torch.Generator().manual_seed(5))
    kl = torch.zeros(len(prompts))
    with torch.no_grad():
        for sign, m in ((1, model), (-1, reference)):
            logits = response_forward(m, batch["prompt_ids"], batch["prompt_mask"], ids, mask) / 0.7
            logp = torch.log_softmax(logits, -1).gather(2, ids.unsqueeze(2)).squeeze(2)
            kl += sign * (logp * mask).sum(1)
    np.testing.assert_allclose(got.kl, kl.numpy(), atol=1e-5)


def test_micro_batched_log_probs_give_the_whole_batchs_numbers(setup, monkeypatch):
    """`eval.micro_batch_size` (by default `ppo.micro_batch_size`) bounds the evaluation's logits
    memory: the same responses, KL and scores as the whole batch at once."""
    cfg, data, model, scorer, decode = setup
    rows, forward = [], evaluation.policy_logprobs

    def counted(model, batch, **kwargs):
        rows.append(batch["response_ids"].shape[0])
        return forward(model, batch, **kwargs)
    monkeypatch.setattr(evaluation, "policy_logprobs", counted)
    torch.manual_seed(1)
    reference = build_policy(cfg.model, data.tokenizer).eval()
    kwargs = dict(batch_size=8, max_new_tokens=6, temperature=0.7, seed=5, decode=decode, gold=data.gold)
    whole = sample_policy(model, reference, scorer, data.test_prompts[:8], data.encoder, **kwargs)
    assert rows == [8, 8]  # policy and reference, the whole batch each
    split = sample_policy(model, reference, scorer, data.test_prompts[:8], data.encoder, micro_batch_size=3,
                          **kwargs)
    assert rows[2:] == [3, 3, 2, 3, 3, 2]  # then in micro-batches of at most 3 rows
    assert split.responses == whole.responses and np.array_equal(split.gold, whole.gold)
    np.testing.assert_allclose(split.kl, whole.kl, atol=1e-5)
    assert not np.allclose(whole.kl, 0.0)  # two different models: the comparison has something to compare
