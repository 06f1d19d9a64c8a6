"""Prompts of the embedded task and their train / validation / test split.

A prompt asks for a topic, a length and a keyword: `write about <topic> in <N> words mentioning
<keyword> :`. The split is a stable hash of the prompt text, so a validation or test prompt is never a
training prompt, whatever the seed, the sizes or the order in which prompts were drawn. The test band
is the one the single held-out "eval" set used before validation prompts existed, so the test
prompts are those earlier results were read on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rto.tasks.embedded.language import MAX_LENGTH, MIN_LENGTH, TOPICS


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for: `length` words about `topic`, one of them `keyword`."""

    topic: str
    length: int
    keyword: str

    def __post_init__(self) -> None:
        if self.topic not in TOPICS:
            raise ValueError(f"unknown topic {self.topic!r}; expected one of {sorted(TOPICS)}")
        if not MIN_LENGTH <= self.length <= MAX_LENGTH:
            raise ValueError(f"length {self.length} outside [{MIN_LENGTH}, {MAX_LENGTH}]")
        if self.keyword not in TOPICS[self.topic]:
            raise ValueError(f"keyword {self.keyword!r} is not a word of topic {self.topic!r}")

    @property
    def text(self) -> str:
        return f"write about {self.topic} in {self.length} words mentioning {self.keyword} :"


def parse(text: str) -> PromptSpec:
    """The `PromptSpec` a prompt text states; ValueError naming the problem if it is malformed."""
    words = text.split()
    template = ["write", "about", None, "in", None, "words", "mentioning", None, ":"]
    if len(words) != len(template):
        raise ValueError(f"prompt has {len(words)} words, expected {len(template)}: {text!r}")
    for i, (word, expected) in enumerate(zip(words, template)):
        if expected is not None and word != expected:
            raise ValueError(f"prompt word {i} is {word!r}, expected {expected!r}: {text!r}")
    topic, length, keyword = words[2], words[4], words[7]
    if not length.isdigit():
        raise ValueError(f"prompt length {length!r} is not a number: {text!r}")
    return PromptSpec(topic=topic, length=int(length), keyword=keyword)


def all_prompts() -> list[PromptSpec]:
    """Every prompt the language can state, in a fixed order."""
    return [
        PromptSpec(topic, length, keyword)
        for topic, keywords in TOPICS.items()
        for length in range(MIN_LENGTH, MAX_LENGTH + 1)
        for keyword in keywords
    ]


PROMPT_SETS = ("train", "val", "test")


def prompt_set(text: str, val_fraction: float, test_fraction: float) -> str:
    """Which set `text` belongs to: a hash of the text alone, cut into bands (test first, then
    validation), so the answer depends on no seed, size or order, and a test prompt stays a test
    prompt whatever the validation share."""
    if not (0.0 <= val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(f"val_prompt_fraction={val_fraction} and test_prompt_fraction={test_fraction} must be "
                         f"shares in [0, 1) (test > 0) that leave prompts for training")
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def split_prompts(val_fraction: float, test_fraction: float) -> dict[str, list[PromptSpec]]:
    """The train / val / test pools: disjoint, and together every prompt."""
    pools: dict[str, list[PromptSpec]] = {name: [] for name in PROMPT_SETS}
    for spec in all_prompts():
        pools[prompt_set(spec.text, val_fraction, test_fraction)].append(spec)
    return pools
