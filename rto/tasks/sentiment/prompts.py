"""Prompts of the sentiment task: neutral English requests for short texts about everyday things.

A prompt is `<request about a thing> <length>[, <tone>].`, e.g. "Write a short review of a desk lamp
in two sentences, in a casual tone." Nothing in it asks for a positive (or negative) text: being
positive is what RL has to learn. 12 requests x 122 things x 4 lengths x 4 tones = 23,424 prompts.

The three splits hold out *things*, not prompt strings: a test prompt never mentions a thing any
training or validation prompt mentions (otherwise "a desk lamp in one sentence" would leak "a desk
lamp in two sentences"). Which things go where is a stable hash of the thing, independent of the
seed and the sizes; the seed only chooses which prompts of each pool are drawn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

REQUESTS = (
    "Write a short review of {thing}",
    "Write a note to a neighbour about {thing}",
    "Describe {thing}",
    "Write a customer comment about {thing}",
    "Write a diary entry about {thing}",
    "Write a social media post about {thing}",
    "Tell me about {thing}",
    "Write a message to a coworker about {thing}",
    "Write your thoughts on {thing}",
    "Write a comment for a review website about {thing}",
    "Write a text message about {thing}",
    "Write a few lines about {thing}",
)

# everyday objects, places and situations; some lean one way (a delayed train), none asks for a verdict
THINGS = (
    "a coffee mug", "a desk lamp", "a pair of running shoes", "a second-hand bicycle", "a phone charger",
    "a kitchen knife", "a rain jacket", "a backpack", "a wall clock", "an electric kettle",
    "a pair of headphones", "a notebook", "a ballpoint pen", "a laptop stand", "an umbrella",
    "a water bottle", "a toaster", "a vacuum cleaner", "a reading chair", "a bedside table",
    "a winter coat", "a pair of sunglasses", "a frying pan", "a garden hose", "a bath towel",
    "a wool scarf", "a travel pillow", "a board game", "a jigsaw puzzle", "a houseplant",
    "a microwave oven", "a computer mouse", "a keyboard", "a printer", "a washing machine",
    "a sofa", "a mattress", "a set of plates", "a lunch box", "a bike helmet",
    "a pair of socks", "a wristwatch", "a paperback novel", "a cookbook", "a photo frame",
    "a shopping bag", "a door mat", "a ceiling fan", "a space heater", "a smoke alarm",
    "the local library", "the neighbourhood park", "the corner bakery", "the village market",
    "the town swimming pool", "the train station", "the post office", "a small hotel room",
    "the hospital waiting room", "the school playground", "a roadside diner", "a hardware store",
    "a laundromat", "the city museum", "a campsite by the lake", "a dentist's office",
    "a shared office kitchen", "a bus stop", "a car park", "a supermarket checkout",
    "the morning commute", "a rainy afternoon", "a delayed train", "a long queue at the bank",
    "a power cut in the evening", "a weekend trip to the coast", "a visit to the vet",
    "moving to a new flat", "a job interview", "the first day at a new job", "a team meeting",
    "a birthday dinner", "a family picnic", "a cooking class", "a yoga lesson",
    "a noisy neighbour", "a flat tyre", "a lost parcel", "a new bus timetable", "a software update",
    "a change in office hours", "a parking fine", "a snowy morning", "a hot summer day",
    "a night shift", "a library book that is overdue", "a school concert", "a football match",
    "a charity run", "a long-haul flight", "a hotel breakfast", "a taxi ride",
    "a haircut", "a piano lesson", "a camping trip", "a garden in autumn", "a cup of tea",
    "a bowl of soup", "a slice of pizza", "a homemade cake", "a vegetable curry", "a cheese sandwich",
    "a bottle of orange juice", "a takeaway coffee", "a breakfast cereal", "a bar of soap",
    "a tube of toothpaste", "a streaming service", "a weather app", "an online course",
    "a podcast episode", "a phone call with customer service",
)

LENGTHS = ("in one sentence", "in two sentences", "in under 30 words", "in about twenty words")
TONES = ("", ", in a casual tone", ", in a formal tone", ", in simple language")

SPLITS = ("train", "validation", "test")
# share of things in each split (the rest after train and validation is test)
THING_FRACTIONS = {"train": 0.7, "validation": 0.15}


@dataclass(frozen=True)
class PromptSplits:
    """Disjoint prompt lists: RL training, validation (every tuning choice), test (the final table)."""

    train: list[str]
    validation: list[str]
    test: list[str]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def things_by_split() -> dict[str, tuple[str, ...]]:
    """Each thing in exactly one split: things sorted by a stable hash, cut at the split fractions."""
    ordered = sorted(THINGS, key=_hash)
    n_train = round(len(ordered) * THING_FRACTIONS["train"])
    n_val = round(len(ordered) * THING_FRACTIONS["validation"])
    cuts = {"train": ordered[:n_train], "validation": ordered[n_train:n_train + n_val],
            "test": ordered[n_train + n_val:]}
    return {name: tuple(things) for name, things in cuts.items()}


def compose(request: str, thing: str, length: str, tone: str) -> str:
    return f"{request.format(thing=thing)} {length}{tone}."


def prompt_pool(split: str) -> list[str]:
    """Every prompt of `split`, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return [compose(request, thing, length, tone)
            for thing in things_by_split()[split]
            for request in REQUESTS for length in LENGTHS for tone in TONES]


def sentiment_prompts(seed: int, n_train: int, n_validation: int, n_test: int) -> PromptSplits:
    """`n_*` distinct prompts per split, drawn with `seed` (one stream per split, so changing one
    size never changes another split's prompts)."""
    drawn = {}
    for stream, (split, n) in enumerate(zip(SPLITS, (n_train, n_validation, n_test))):
        pool = prompt_pool(split)
        if not 0 <= n <= len(pool):
            raise ValueError(f"n_{split}={n}: the {split} split has {len(pool)} prompts (need 0 <= n <= that)")
        order = np.random.default_rng([seed, stream]).choice(len(pool), size=n, replace=False)
        drawn[split] = [pool[i] for i in order]
    return PromptSplits(**drawn)
