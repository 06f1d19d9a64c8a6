"""Stage recipes, registered in the order the orchestrator (`rto.pipeline`) walks them: each says
what its stage needs, how it trains and what it saves. The Lightning modules that hold the training
steps live in `rto.stages`; see docs/EXTENDING.md for adding a stage or a learner."""

from rto.recipes.base import StageRecipe, Upstream
from rto.recipes.dpo import DPORecipe
from rto.recipes.evaluation import EvaluationRecipe
from rto.recipes.pairs import PairsRecipe
from rto.recipes.reward_model import RewardModelRecipe
from rto.recipes.rl import LEARNERS, RLRecipe
from rto.recipes.sft import SFTRecipe

RECIPES: dict[str, StageRecipe] = {recipe.name: recipe for recipe in (
    SFTRecipe(), PairsRecipe(), RewardModelRecipe(), DPORecipe(), RLRecipe(), EvaluationRecipe())}

__all__ = ["RECIPES", "LEARNERS", "StageRecipe", "Upstream"]
