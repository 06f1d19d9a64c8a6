"""PPO's final critic on disk: `<run>/checkpoints/critic`, written beside the actor when PPO ends.

The folder is a `ScalarHeadModel` save with the *policy's* tokenizer (the critic gives a value per
policy token, whatever tokenizer the reward model has), the running statistics PPO normalised the
reward-model score with (`reward_normalizer.json`, so the rewards it handed out can be recomputed
exactly), and a manifest like every stage folder (`rto.artifacts`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from transformers import PreTrainedTokenizerBase

from rto.algos.advantages import RunningMoments
from rto.artifacts import atomic_write_text, verify_manifest, write_folder
from rto.models.scalar_head import ScalarHeadModel

KIND = "critic"
NORMALIZER_FILE = "reward_normalizer.json"


def save_critic(folder: str | Path, critic: ScalarHeadModel, tokenizer: PreTrainedTokenizerBase,
                score_moments: Optional[RunningMoments], cfg_hash: Optional[str]) -> Path:
    """Write the critic (a LoRA backbone merged on a copy: its frozen base may be the reward model's)."""
    def write(tmp: Path) -> None:
        critic.save_pretrained(tmp, in_place=False)
        tokenizer.save_pretrained(tmp)
        state = None if score_moments is None else {"mean": score_moments.mean, "var": score_moments.var,
                                                    "count": score_moments.count}
        atomic_write_text(tmp / NORMALIZER_FILE, json.dumps({"score_moments": state}, indent=2) + "\n")
    return write_folder(folder, KIND, cfg_hash, write)


def load_critic(folder: str | Path, cfg_hash: Optional[str] = None) -> tuple[ScalarHeadModel, Optional[RunningMoments]]:
    """The critic (in eval mode, frozen) and PPO's reward statistics at its end (None: not normalised)."""
    folder = Path(folder)
    verify_manifest(folder, KIND, cfg_hash, require=True)
    critic = ScalarHeadModel.from_pretrained(folder).eval().requires_grad_(False)
    state = json.loads((folder / NORMALIZER_FILE).read_text())["score_moments"]
    if state is None:
        return critic, None
    moments = RunningMoments()
    moments.mean, moments.var, moments.count = state["mean"], state["var"], state["count"]
    return critic, moments
