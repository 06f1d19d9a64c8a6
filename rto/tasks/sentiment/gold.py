"""The gold reward of the sentiment task: VADER's compound score, kept honest by penalties.

VADER (Hutto & Gilbert 2014, PyPI `vadersentiment`, lexicon shipped in the wheel) scores a text in
[-1, 1] from a valence lexicon and rules no single token decides: negation ("not good" < 0), boosters
("very good" > "good"), contrast ("good but terrible" < 0: the clause after "but" weighs more),
capitals and exclamation marks. Alone it is easy to game: "great great love love amazing!!!" or a
list of positive words scores ~0.97, above any natural review; an empty answer scores 0, above a
mildly negative one. So, for a response y (text decoded with its special tokens kept):

    c = y without its final end marker (the tokenizer's EOS text), stripped;  w = its words, n = |w|

    r*(x, y) = vader(c)                                                     in [-1, 1]
             - SHORT_COST  * max(0, MIN_WORDS - n) / MIN_WORDS              empty or too short
             - NO_END_COST * [y does not end with the end marker]          cut off: no end
             - LONG_COST   * min(1, max(0, n - MAX_WORDS) / MAX_WORDS)      runaway length
             - REPEAT_COST * max(0, rep - REPEAT_FREE)                      repeated words / phrases
             - LIST_COST   * max(0, dens - LIST_FREE) / (1 - LIST_FREE)     a word list, not prose

    rep  = max(share of content words (not function words) that repeat an earlier one,
               share of word 3-grams that repeat an earlier one)
    dens = share of words in VADER's lexicon (sentiment-bearing words)

Natural prose repeats a noun now and then (rep < REPEAT_FREE) and carries a sentiment word every
few words (dens < LIST_FREE), so it pays nothing; a stack of positive words pays up to LIST_COST.
The best a response can do is 1: clearly positive, natural, 5..MAX_WORDS words, ended. The prompt
does not enter the score (every prompt is neutral: none asks for a sentiment).
What is left to game, on purpose: VADER's own rules (exclamation marks, capitals) within the
saturation of the compound score, and off-topic positive prose.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np

# SmolLM2's EOS as decoded text; other tokenizers pass theirs (`tokenizer.eos_token`)
END_MARKER = "<|im_end|>"

MIN_WORDS = 5
MAX_WORDS = 60
SHORT_COST = 1.0
NO_END_COST = 0.5
LONG_COST = 1.0
REPEAT_COST = 2.0
REPEAT_FREE = 0.1
LIST_COST = 1.5
LIST_FREE = 0.3

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

# words that carry grammar, not content: repeating them is what prose does
FUNCTION_WORDS = frozenset("""
a an the and or but nor so yet for of to in on at by with from into onto over under about as than
then that this these those there here it its it's i i'm i've i'd me my mine we we're our ours you
you're your yours he him his she her hers they they're them their theirs who whom whose which what
when where why how is am are was were be been being do does did done have has had having will would
shall should can could may might must not no if because while also just very too really all any
some each every both either neither one ones more most such own same other only up down out off
again once s t don't doesn't didn't isn't wasn't aren't weren't won't can't couldn't let's get got
""".split())


@lru_cache(maxsize=1)
def analyzer():
    """VADER's analyser; reads its lexicon from the installed wheel (no network)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


@dataclass(frozen=True)
class GoldParts:
    """r*(x, y) split into VADER's score and each penalty (penalties >= 0, subtracted)."""

    vader: float
    short: float
    unended: float
    overlong: float
    repetition: float
    word_list: float

    @property
    def total(self) -> float:
        return self.vader - self.short - self.unended - self.overlong - self.repetition - self.word_list

    def as_dict(self) -> dict[str, float]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "total": self.total}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _repeated_share(items: Sequence) -> float:
    """Share of `items` equal to an earlier one (0 for none)."""
    return 1.0 - len(set(items)) / len(items) if items else 0.0


def repetition(ws: Sequence[str]) -> float:
    """max(repeated content-word share, repeated 3-gram share), in [0, 1)."""
    content = [w for w in ws if w not in FUNCTION_WORDS]
    trigrams = list(zip(ws, ws[1:], ws[2:]))
    return max(_repeated_share(content), _repeated_share(trigrams))


def lexicon_density(ws: Sequence[str]) -> float:
    """Share of words VADER's lexicon gives a valence."""
    lexicon = analyzer().lexicon
    return sum(w in lexicon for w in ws) / len(ws) if ws else 0.0


def gold_parts(response: str, end_marker: str = END_MARKER) -> GoldParts:
    """Every term of r*(x, y); see the module docstring."""
    if not end_marker:
        raise ValueError("end_marker must be the EOS text responses end with, not empty")
    ended = response.endswith(end_marker)
    text = (response[: -len(end_marker)] if ended else response).strip()
    ws = words(text)
    n = len(ws)
    return GoldParts(
        vader=float(analyzer().polarity_scores(text)["compound"]) if text else 0.0,
        short=SHORT_COST * max(0, MIN_WORDS - n) / MIN_WORDS,
        unended=0.0 if ended else NO_END_COST,
        overlong=LONG_COST * min(1.0, max(0, n - MAX_WORDS) / MAX_WORDS),
        repetition=REPEAT_COST * max(0.0, repetition(ws) - REPEAT_FREE),
        word_list=LIST_COST * max(0.0, lexicon_density(ws) - LIST_FREE) / (1.0 - LIST_FREE),
    )


def gold_reward(prompt: str, response: str, end_marker: str = END_MARKER) -> float:
    """r*(x, y); the prompt is accepted for the judge's signature and does not enter the score."""
    return gold_parts(response, end_marker).total


def gold_rewards(prompts: Sequence[str], responses: Sequence[str], end_marker: str = END_MARKER) -> np.ndarray:
    """r*(x, y) for a batch, as a float64 array of shape [batch]."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return np.array([gold_parts(r, end_marker).total for r in responses], dtype=np.float64)


def gold_breakdown(responses: Sequence[str], end_marker: str = END_MARKER) -> dict[str, np.ndarray]:
    """Each term of r* (and the total) over a batch, for inspection: name -> float64 array [batch]."""
    parts = [gold_parts(r, end_marker).as_dict() for r in responses]
    return {name: np.array([p[name] for p in parts], dtype=np.float64) for name in parts[0]} if parts else {}
