"""The experiment: SFT -> reward model -> DPO -> RL (sentence or token reward) -> evaluation.

The orchestrator walks the stage recipes (`rto.recipes.RECIPES`) in order, keeping the stage that
`stage=` asks for and every stage it needs. Each checkpointed stage's model comes from the artifact
store (`rto.store`): its folder under `<run>/checkpoints/<stage>` (or `<stage>.checkpoint`), a cache
hit, or training. So `stage=ppo`, or a re-run after a crash, reuses what is done; a stage interrupted
mid-way resumes from `<stage>-resume/` (`rto.resume`). Evaluation runs on rank 0 and writes the
outputs (`rto.outputs`).
"""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from rto.context import RunContext
from rto.recipes import RECIPES, StageRecipe, Upstream
from rto.store import ArtifactStore, MissingStageError

__all__ = ["run", "plan", "MissingStageError"]


def plan(cfg: DictConfig) -> list[StageRecipe]:
    """The recipes this job walks: the one `stage=` names (`all`: through evaluation) and every stage
    it needs, in registry order."""
    target = "eval" if cfg.stage == "all" else cfg.stage
    wanted, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(RECIPES[name].needs(cfg))
    return [recipe for name, recipe in RECIPES.items() if name in wanted]


def may_train(cfg: DictConfig, stage: str) -> bool:
    """Whether this job trains `stage` when no finished one is found: under `stage=all` every stage it
    walks, else only the one named (the others must exist already)."""
    return cfg.stage in ("all", stage)


def configure_torch(cfg: DictConfig) -> None:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the stages `cfg.stage` asks for; return the job's metrics (evaluation's, when it ran)."""
    configure_torch(cfg)
    ctx = RunContext(cfg)
    store = ArtifactStore(ctx)
    upstream = Upstream(saved_path=store.saved_path)
    try:
        ctx.log_hyperparams()
        for recipe in plan(cfg):
            if recipe.checkpointed:
                upstream.models[recipe.name] = store.load_or_train(recipe, upstream, may_train(cfg, recipe.name))
                recipe.report(ctx, upstream[recipe.name], upstream)
            elif ctx.is_global_zero:  # evaluation runs on rank 0 alone
                recipe.run(ctx, upstream)
        return ctx.metrics
    finally:
        ctx.finish()
