"""The mediocre base generator whose samples are the SFT demonstrations and the preference pairs.

Its responses are plausible but often miss what the prompt asked: wrong length, off-topic or
negative words, repetitions, a missing keyword, no `<eos>`. That leaves RL headroom to find.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from rto.tasks.embedded.language import EOS, NEGATIVE_WORDS, NEUTRAL_WORDS, TOPICS
from rto.tasks.embedded.prompts import PromptSpec


@dataclass(frozen=True)
class GeneratorConfig:
    """How badly the base generator behaves; the defaults give the task its headroom."""

    max_response_words: int = 16  # including `<eos>`
    length_noise_std: float = 2.5  # target + round(N(0, std)): exact length only ~1 time in 6
    p_on_topic: float = 0.35
    p_neutral: float = 0.35
    p_off_topic: float = 0.2
    p_negative: float = 0.1
    p_repeat: float = 0.1  # repeat the previous word instead of drawing a new one
    p_keyword: float = 0.4  # force the keyword in (it may also be drawn as an on-topic word)
    p_eos: float = 0.75  # otherwise the response is cut without the end token

    def __post_init__(self) -> None:
        if self.max_response_words < 2:
            raise ValueError(f"max_response_words must be >= 2, got {self.max_response_words}")
        mixture = self.p_on_topic + self.p_neutral + self.p_off_topic + self.p_negative
        if not math.isclose(mixture, 1.0):
            raise ValueError(f"word mixture probabilities sum to {mixture}, not 1")


@cache
def _word_pools(topic: str) -> tuple[tuple[str, ...], ...]:
    """(on-topic, neutral, off-topic, negative) words, in the order of the mixture."""
    off_topic = tuple(w for t, ws in TOPICS.items() if t != topic for w in ws)
    return TOPICS[topic], NEUTRAL_WORDS, off_topic, NEGATIVE_WORDS


def sample_response(
    spec: PromptSpec, rng: np.random.Generator, config: GeneratorConfig = GeneratorConfig()
) -> str:
    """One base-generator response to `spec`: words joined by spaces, `<eos>` last if present."""
    has_eos = bool(rng.random() < config.p_eos)
    max_words = config.max_response_words - 1 if has_eos else config.max_response_words
    n = min(max(spec.length + round(rng.normal(0.0, config.length_noise_std)), 1), max_words)

    pools = _word_pools(spec.topic)
    mixture = np.cumsum([config.p_on_topic, config.p_neutral, config.p_off_topic])
    # Draw everything for the response at once: one rng call per word would dominate the runtime.
    categories = np.searchsorted(mixture, rng.random(n), side="right")
    picks = rng.random(n)
    repeats = rng.random(n) < config.p_repeat

    words: list[str] = []
    for i in range(n):
        if i > 0 and repeats[i]:
            words.append(words[-1])
        else:
            pool = pools[categories[i]]
            words.append(pool[int(picks[i] * len(pool))])
    if spec.keyword not in words and rng.random() < config.p_keyword:
        words[int(rng.integers(n))] = spec.keyword
    if has_eos:
        words.append(EOS)
    return " ".join(words)
