"""SFT: the policy (pretrained, or built from the preset's shape) fine-tuned on demonstrations -> pi_ref.
With `sft.epochs=0` the starting model is pi_ref as it is (an instruct model, with a fresh LoRA adapter,
which starts as the identity): what the sentiment task does, having no demonstrations."""

from __future__ import annotations

from hydra.utils import instantiate

from rto.data import SFTCollator
from rto.errors import ConfigError
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
        if cfg.epochs == 0:
            return policy
        if not ctx.data.sft_rows:
            raise ConfigError(f"sft.epochs={cfg.epochs} fine-tunes on demonstrations, but data={ctx.cfg.data.name} "
                              f"has none: set sft.epochs=0 (the starting model is the reference)")
        collate = SFTCollator(ctx.data.encoder)
        module = SFTModule(policy, instantiate(cfg.optimizer), micro_batch_size=cfg.get("micro_batch_size"),
                           max_grad_norm=cfg.get("max_grad_norm"))
        ctx.fit(self, module,
                lambda: (ctx.loader(ctx.data.sft_rows, collate, cfg.batch_size, shuffle=True), None),
                max_epochs=cfg.epochs)
        return policy
