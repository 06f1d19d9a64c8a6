"""Preference labels from the gold reward, noisy the way the reward model and DPO assume.

For two responses y1, y2 to a prompt the winner is drawn from Bradley-Terry on the gold:
P(y1 > y2) = sigmoid((r*(y1) - r*(y2)) / T). A small T follows the gold ranking almost always; a
large T labels close pairs nearly at random, as human raters do. The agreement of the labels with
the gold ranking bounds the accuracy any reward model can reach on them:
  expected = mean over pairs with a gold difference of sigmoid(|r*(y1) - r*(y2)| / T),
  realised = share of those pairs whose label picked the higher gold.
Pairs of identical responses carry no preference and are dropped; gold ties (different texts, same
score) get a coin flip and are left out of both agreements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

GoldJudge = Callable[[list[str], list[str]], np.ndarray]


@dataclass(frozen=True)
class LabelStats:
    n_pairs: int            # rows returned
    n_identical: int        # pairs dropped: both responses the same text
    n_gold_ties: int        # rows whose two responses have the same gold
    expected_agreement: float  # what the temperature implies on these margins (nan if every row ties)
    realised_agreement: float  # what this draw gave (nan if every row ties)


def expected_agreement(margins: np.ndarray, temperature: float) -> float:
    """Mean P(label follows the gold) over non-zero gold margins: sigmoid(|margin| / T)."""
    decided = np.abs(np.asarray(margins, dtype=np.float64))
    decided = decided[decided > 0]
    return float(np.mean(1.0 / (1.0 + np.exp(-decided / temperature)))) if decided.size else float("nan")


def bradley_terry_labels(prompts: Sequence[str], first: Sequence[str], second: Sequence[str], gold: GoldJudge,
                         temperature: float, seed: int) -> tuple[list[dict[str, str]], LabelStats]:
    """`{"prompt", "chosen", "rejected"}` rows, one per prompt whose two responses differ, the winner
    drawn from Bradley-Terry on `gold` at `temperature` with `seed`; and how well they agree with it."""
    if not len(prompts) == len(first) == len(second):
        raise ValueError(f"{len(prompts)} prompts, {len(first)} first and {len(second)} second responses")
    if not temperature > 0:
        raise ValueError(f"the label temperature must be > 0, got {temperature}")
    keep = [i for i in range(len(prompts)) if first[i] != second[i]]
    kept_prompts = [prompts[i] for i in keep]
    one, two = [first[i] for i in keep], [second[i] for i in keep]
    margins = (np.asarray(gold(kept_prompts, one), dtype=np.float64)
               - np.asarray(gold(kept_prompts, two), dtype=np.float64))
    p_first = 1.0 / (1.0 + np.exp(-margins / temperature))
    first_wins = np.random.default_rng(seed).random(len(keep)) < p_first
    rows = [{"prompt": p, "chosen": a if win else b, "rejected": b if win else a}
            for p, a, b, win in zip(kept_prompts, one, two, first_wins)]
    decided = margins != 0
    follows_gold = (margins > 0) == first_wins
    stats = LabelStats(
        n_pairs=len(rows),
        n_identical=len(prompts) - len(keep),
        n_gold_ties=int((~decided).sum()),
        expected_agreement=expected_agreement(margins, temperature),
        realised_agreement=float(follows_gold[decided].mean()) if decided.any() else float("nan"),
    )
    return rows, stats


def label_agreement(rows: Sequence[dict[str, str]], gold: GoldJudge) -> float:
    """Share of rows with r*(chosen) > r*(rejected), gold ties left out (nan if all tie)."""
    prompts = [r["prompt"] for r in rows]
    margins = (np.asarray(gold(prompts, [r["chosen"] for r in rows]), dtype=np.float64)
               - np.asarray(gold(prompts, [r["rejected"] for r in rows]), dtype=np.float64))
    decided = margins != 0
    return float((margins[decided] > 0).mean()) if decided.any() else float("nan")
