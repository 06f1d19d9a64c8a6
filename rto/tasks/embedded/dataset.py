"""The embedded task's data: SFT demonstrations, preference pairs, and train / validation / test prompts.

Rows have the schemas real data uses (`{"prompt", "response"}` and `{"prompt", "chosen",
"rejected"}`), so the pipeline cannot tell this task from UltraFeedback-style files. Preference
labels are drawn from Bradley-Terry on the gold reward, P(y1 > y2) = sigmoid((r*(y1) - r*(y2)) / T):
noisy, as human labels are, and exactly the model DPO and the reward model assume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rto.tasks.embedded.generator import GeneratorConfig, sample_response
from rto.tasks.embedded.gold import gold_reward
from rto.tasks.embedded.prompts import PromptSpec, split_prompts

# One independent random stream per product, so that asking for one never shifts another, and the
# validation and test prompts stay the same whatever the training sizes.
_STREAMS = {"train": 0, "sft": 1, "pairs": 2, "test": 3, "val": 4}


@dataclass(frozen=True)
class EmbeddedTask:
    """The task for one seed and size; identical parameters give identical data."""

    seed: int = 0
    n_sft: int = 2000
    n_pairs: int = 2000
    n_train_prompts: int = 512
    n_val_prompts: int = 64
    n_test_prompts: int = 64
    val_prompt_fraction: float = 0.15
    test_prompt_fraction: float = 0.2
    bt_temperature: float = 2.0  # labels agree with the gold ranking ~85% of the time
    max_response_words: int = 16  # including <eos>

    def __post_init__(self) -> None:
        for name in ("n_sft", "n_pairs", "n_train_prompts", "n_val_prompts", "n_test_prompts"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bt_temperature <= 0:
            raise ValueError(f"bt_temperature must be > 0, got {self.bt_temperature}")
        pools = self._pools()
        for name, pool in pools.items():
            n = getattr(self, f"n_{name}_prompts")
            if n > len(pool):
                raise ValueError(f"n_{name}_prompts={n} exceeds the {len(pool)} prompts of the {name} set at "
                                 f"val_prompt_fraction={self.val_prompt_fraction}, "
                                 f"test_prompt_fraction={self.test_prompt_fraction}")

    @property
    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(max_response_words=self.max_response_words)

    def _rng(self, stream: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, _STREAMS[stream]])

    def _pools(self) -> dict[str, list[PromptSpec]]:
        return split_prompts(self.val_prompt_fraction, self.test_prompt_fraction)

    def _prompt_specs(self, name: str) -> list[PromptSpec]:
        """`n_<name>_prompts` prompts drawn without replacement from the set's pool."""
        pool = self._pools()[name]
        picked = self._rng(name).choice(len(pool), size=getattr(self, f"n_{name}_prompts"), replace=False)
        return [pool[i] for i in picked]

    def _training_specs(self, n_rows: int, name: str) -> list[PromptSpec]:
        specs = self._prompt_specs("train")
        if n_rows and not specs:
            raise ValueError(f"{name}={n_rows} needs n_train_prompts > 0")
        return specs

    def prompts(self, name: str) -> list[str]:
        """The prompts of one set: `train` (RL, SFT and preference data), `val` (tuning and stopping
        choices) or `test` (the final table). No training row ever uses a validation or test prompt."""
        return [spec.text for spec in self._prompt_specs(name)]

    def train_prompts(self) -> list[str]:
        return self.prompts("train")

    def sft_rows(self) -> list[dict[str, str]]:
        """`n_sft` base-generator demonstrations on training prompts."""
        specs = self._training_specs(self.n_sft, "n_sft")
        rng = self._rng("sft")
        rows = []
        for _ in range(self.n_sft):
            spec = specs[int(rng.integers(len(specs)))]
            rows.append({"prompt": spec.text,
                         "response": sample_response(spec, rng, self.generator_config)})
        return rows

    def preference_rows(self) -> list[dict[str, str]]:
        """`n_pairs` pairs of distinct base samples, the winner drawn from Bradley-Terry on r*."""
        specs = self._training_specs(self.n_pairs, "n_pairs")
        rng = self._rng("pairs")
        rows: list[dict[str, str]] = []
        while len(rows) < self.n_pairs:
            spec = specs[int(rng.integers(len(specs)))]
            first = sample_response(spec, rng, self.generator_config)
            second = sample_response(spec, rng, self.generator_config)
            if first == second:  # no preference to express
                continue
            margin = gold_reward(spec.text, first) - gold_reward(spec.text, second)
            p_first = 1.0 / (1.0 + np.exp(-margin / self.bt_temperature))
            chosen, rejected = (first, second) if rng.random() < p_first else (second, first)
            rows.append({"prompt": spec.text, "chosen": chosen, "rejected": rejected})
        return rows

    def label_agreement(self) -> float:
        """Fraction of pairs whose label agrees with the gold ranking, gold ties left out."""
        return label_agreement(self.preference_rows())


def label_agreement(rows: list[dict[str, str]]) -> float:
    """Fraction of `{"prompt", "chosen", "rejected"}` rows with r*(chosen) > r*(rejected), ties
    left out: how noisy the labels are, hence the best accuracy a reward model can reach."""
    margins = np.array(
        [gold_reward(r["prompt"], r["chosen"]) - gold_reward(r["prompt"], r["rejected"]) for r in rows]
    )
    decided = margins != 0
    if not decided.any():
        raise ValueError("no pair with a gold preference: agreement is undefined")
    return float((margins[decided] > 0).mean())
