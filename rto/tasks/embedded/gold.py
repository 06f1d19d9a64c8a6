"""The gold reward r*(x, y) of the embedded task: the judge that real RLHF gets from GPT-4.

A response y = w_1 .. w_n [<eos>] to a prompt x asking for `L` words about topic `t` mentioning
keyword `k` scores

    r*(x, y) = sum_i d(w_i)                            dense: one term per word
             - LENGTH_COST * |n - L|                   sequence: n = words before <eos>
             - REPEAT_COST * #{i : w_i in w_1..w_i-1}
             - NO_EOS_COST * [y has no <eos>]

with the per-word term

    d(w) = ON_TOPIC      if w is a word of topic t        (+ KEYWORD_BONUS if w == k, first time)
         = 0             if w is a neutral word or <eos>
         = OFF_TOPIC     if w is a word of another topic
         = NEGATIVE      otherwise: negative words, <unk>, prompt words, numbers, topic names.

The dense part rewards single tokens; the sequence part is decided by no single token (one more
word is good or bad depending on how many came before). The costs exceed ON_TOPIC, so the optimum
is exactly L distinct on-topic words including the keyword, then <eos>: L * ON_TOPIC + KEYWORD_BONUS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rto.tasks.embedded.language import EOS, NEUTRAL_WORDS, TOPICS, WORD_TO_TOPIC
from rto.tasks.embedded.prompts import parse

ON_TOPIC = 1.0
KEYWORD_BONUS = 2.0
OFF_TOPIC = -1.0
NEGATIVE = -2.0
LENGTH_COST = 1.5
REPEAT_COST = 2.0
NO_EOS_COST = 4.0

_NEUTRAL = frozenset(NEUTRAL_WORDS)


@dataclass(frozen=True)
class GoldParts:
    """The gold reward split into the part tokens decide and the part only the sequence decides."""

    dense: float
    sequence: float

    @property
    def total(self) -> float:
        return self.dense + self.sequence


def _words(response: str) -> list[str]:
    """The response words, checked: nothing after `<eos>`. A policy may sample `<pad>` or `<bos>`
    (they are in its vocabulary); they score as any other non-word, NEGATIVE."""
    words = response.split()
    if EOS in words[:-1]:
        raise ValueError(f"response has words after {EOS}: {response!r}")
    return words


def gold_token_rewards(prompt: str, response: str) -> list[float]:
    """d(w_i) for every word of `response`, `<eos>` included (0.0), aligned with its token ids."""
    spec = parse(prompt)
    on_topic = frozenset(TOPICS[spec.topic])
    rewards = []
    keyword_seen = False
    for word in _words(response):
        if word in on_topic:
            bonus = KEYWORD_BONUS if word == spec.keyword and not keyword_seen else 0.0
            keyword_seen = keyword_seen or word == spec.keyword
            rewards.append(ON_TOPIC + bonus)
        elif word in _NEUTRAL or word == EOS:
            rewards.append(0.0)
        elif word in WORD_TO_TOPIC:
            rewards.append(OFF_TOPIC)
        else:
            rewards.append(NEGATIVE)
    return rewards


def gold_parts(prompt: str, response: str) -> GoldParts:
    """The dense and the sequence part of r*(x, y); see the module docstring."""
    spec = parse(prompt)
    words = _words(response)
    has_eos = bool(words) and words[-1] == EOS
    content = words[:-1] if has_eos else words
    repeats = len(content) - len(set(content))
    sequence = (
        -LENGTH_COST * abs(len(content) - spec.length)
        - REPEAT_COST * repeats
        - NO_EOS_COST * (not has_eos)
    )
    return GoldParts(dense=float(sum(gold_token_rewards(prompt, response))), sequence=sequence)


def gold_reward(prompt: str, response: str) -> float:
    """r*(x, y)."""
    return gold_parts(prompt, response).total


def gold_rewards(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """r*(x, y) for a batch, as a float64 array of shape [batch]."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return np.array([gold_reward(p, r) for p, r in zip(prompts, responses)], dtype=np.float64)


def optimal_rewards(prompts: Sequence[str]) -> np.ndarray:
    """The maximum of r* for each prompt (L * ON_TOPIC + KEYWORD_BONUS): what a perfect policy scores."""
    return np.asarray([gold_reward(p, optimal_response(p)) for p in prompts], dtype=float)


def optimal_response(prompt: str) -> str:
    """A response reaching the maximum of r*: L distinct on-topic words, keyword first, `<eos>`."""
    spec = parse(prompt)
    others = [w for w in TOPICS[spec.topic] if w != spec.keyword]
    return " ".join([spec.keyword, *others[: spec.length - 1], EOS])
