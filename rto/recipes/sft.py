"""SFT: the policy (pretrained, or built from the preset's shape) fine-tuned on demonstrations -> pi_ref."""

from __future__ import annotations

from hydra.utils import instantiate

from rto.data import SFTCollator
from rto.models import build_policy
from rto.recipes.base import StageRecipe
from rto.stages import SFTModule


class SFTRecipe(StageRecipe):
    name = "sft"
    config_keys = ("seed", "model", "data", "sft")
    seed_offset = 0

    def train(self, ctx, upstream):
        cfg = ctx.cfg.sft
        policy = build_policy(ctx.cfg.model, ctx.data.tokenizer)
        collate = SFTCollator(ctx.data.encoder)
        ctx.fit(self, SFTModule(policy, instantiate(cfg.optimizer)),
                lambda: (ctx.loader(ctx.data.sft_rows, collate, cfg.batch_size, shuffle=True), None),
                max_epochs=cfg.epochs)
        return policy
