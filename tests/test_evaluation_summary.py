"""Per-policy summary numbers, computed by hand: distinct-word ratio, gold as a share of the optimum."""

from __future__ import annotations

import numpy as np
import pytest

from rto.evaluation import Samples, distinct_ratio, summarize
from rto.tasks.embedded import optimal_response, optimal_rewards
from rto.tasks.embedded.gold import gold_reward


def samples(responses, gold):
    n = len(responses)
    return Samples(prompts=["p"] * n, responses=responses, kl=np.zeros(n), rm_score=np.zeros(n),
                   length=np.ones(n), gold=np.asarray(gold, dtype=float))


def test_distinct_ratio_by_hand():
    assert distinct_ratio("cat dog cat <eos>", frozenset({"<eos>"})) == pytest.approx(2 / 3)
    assert distinct_ratio("cat dog cat <eos>") == pytest.approx(3 / 4)
    assert distinct_ratio("") == 1.0


def test_summary_has_length_diversity_and_share_of_optimum():
    policy = samples(["cat cat cat <eos>", "dog fox <eos>"], [2.0, -3.0])
    baseline = samples(["cat <eos>", "dog <eos>"], [1.0, -3.0])
    out = summarize(policy, baseline, optimum=np.array([4.0, 6.0]), special=frozenset({"<eos>"}))
    assert out["distinct_ratio"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["gold_fraction"] == pytest.approx((2 / 4 - 3 / 6) / 2)  # per prompt, then averaged
    assert out["win_rate"] == pytest.approx(0.75)  # a win and a tie
    assert "gold_fraction" not in summarize(policy, baseline)  # real data: no known optimum


def test_optimum_is_the_gold_of_the_optimal_response():
    prompts = ["write about food in 5 words mentioning cake :", "write about city in 4 words mentioning plaza :"]
    assert list(optimal_rewards(prompts)) == [gold_reward(p, optimal_response(p)) for p in prompts] == [7.0, 6.0]
