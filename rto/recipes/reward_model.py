"""The Bradley-Terry reward model, from the SFT backbone or a separate pretrained one; its held-out
preference accuracy is reported whether it was trained now or loaded."""

from __future__ import annotations

import logging

from hydra.utils import instantiate

from rto.data import PairCollator
from rto.models import ScalarHeadModel
from rto.models.reward import new_reward_model
from rto.data.bundle import pairs_from_policy
from rto.recipes.base import StageRecipe
from rto.stages import RewardModelModule

log = logging.getLogger(__name__)


class RewardModelRecipe(StageRecipe):
    name = "rm"
    config_keys = ("seed", "model", "data", "sft", "pairs", "rm", "reward_model")
    seed_offset = 1

    def needs(self, cfg):
        return ("sft",) + (("pairs",) if pairs_from_policy(cfg) else ())  # pairs sampled from SFT: a stage

    def module(self, ctx, model) -> RewardModelModule:
        cfg = ctx.cfg.rm
        return RewardModelModule(model, instantiate(cfg.optimizer), share_prompt=cfg.share_prompt,
                                 micro_batch_size=cfg.get("micro_batch_size"),
                                 max_grad_norm=cfg.get("max_grad_norm"))

    def train(self, ctx, upstream):
        cfg = ctx.cfg.rm
        model = new_reward_model(ctx.cfg.reward_model, ctx.cfg.model, upstream["sft"])
        collate = PairCollator(ctx.rm_encoder)
        ctx.fit(self, self.module(ctx, model),
                lambda: (ctx.loader(ctx.data.train_pairs, collate, cfg.batch_size, shuffle=True), None),
                max_epochs=cfg.epochs)
        return model

    def load(self, ctx, path):
        return ScalarHeadModel.from_pretrained(path)

    def save(self, ctx, model, folder):
        model.save_pretrained(folder)
        ctx.rm_tokenizer.save_pretrained(folder)

    def report(self, ctx, model, upstream):
        if not ctx.data.val_pairs:
            return
        val = ctx.loader(ctx.data.val_pairs, PairCollator(ctx.rm_encoder), ctx.cfg.rm.batch_size, shuffle=False)
        result = ctx.validate(self.module(ctx, model), val)
        ctx.metrics["rm/val_accuracy"] = float(result[0]["rm/val_accuracy"])
        log.info("reward model held-out preference accuracy: %.3f", ctx.metrics["rm/val_accuracy"])
