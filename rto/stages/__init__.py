"""Lightning modules: training logic only. Rollouts, rewards, advantages and evaluation live
in `rto.rl`, `rto.algos` and `rto.evaluation` and know nothing of Lightning."""

from rto.stages.critic_free import CriticFreeModule
from rto.stages.dpo import DPOModule
from rto.stages.ppo import PPOModule
from rto.stages.reward_model import RewardModelModule
from rto.stages.sft import SFTModule

__all__ = ["SFTModule", "RewardModelModule", "DPOModule", "PPOModule", "CriticFreeModule"]
