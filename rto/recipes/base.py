"""What a stage recipe is: what the stage needs, how it trains, what it saves.

The orchestrator (`rto.pipeline`) walks the registry (`rto.recipes.RECIPES`) in order. A
checkpointed recipe's model comes from the artifact store (`rto.store`): an existing checkpoint, a
cache hit, or `train` followed by `save`. `report` runs either way (e.g. the reward model's held-out
accuracy). A recipe that is not checkpointed (evaluation) only `run`s, on rank 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig

from rto.context import RunContext
from rto.models import load_policy, save_policy


@dataclass
class Upstream:
    """The models of the stages provided so far, and where their checkpoints are (later stages load
    fresh trainable copies from disk rather than deep-copying a model in memory)."""

    models: dict[str, Any] = field(default_factory=dict)
    saved_path: Callable[[str], Path] = None

    def __getitem__(self, stage: str):
        return self.models[stage]

    def get(self, stage: str):
        return self.models.get(stage)

    def path(self, stage: str) -> Path:
        return self.saved_path(stage)


class StageRecipe:
    name: str = ""                       # the `stage=` value and the checkpoint folder's name
    config_keys: tuple[str, ...] = ()    # the config that determines its weights (manifest, resume hash)
    seed_offset: int = 0                 # training starts from seed_everything(seed + seed_offset)
    resume_every: Optional[int] = None   # steps between resume checkpoints (None: resume.every_n_steps)
    checkpointed: bool = True

    def needs(self, cfg: DictConfig) -> tuple[str, ...]:
        """The stages whose models `train`, `report` or `run` read."""
        return ()

    def train(self, ctx: RunContext, upstream: Upstream):
        raise NotImplementedError

    def load(self, ctx: RunContext, path: Path):
        return load_policy(path, ctx.cfg.model)

    def save(self, ctx: RunContext, model, folder: Path) -> None:
        save_policy(model, ctx.data.tokenizer, folder)

    def report(self, ctx: RunContext, model, upstream: Upstream) -> None:
        """After the model is provided, trained or loaded alike."""

    def run(self, ctx: RunContext, upstream: Upstream) -> None:
        """A recipe without a checkpoint (evaluation): its whole work."""
        raise NotImplementedError
