"""DPO from pi_ref on the preference pairs -> pi_dpo (a baseline, and RTO's token-reward source).
`dpo.loss=ipo|simpo` trains a DPO-family baseline in its place (`conf/dpo/{ipo,simpo}.yaml`)."""

from __future__ import annotations

from hydra.utils import instantiate

from rto.data import PairCollator
from rto.models import load_policy
from rto.data.bundle import pairs_from_policy
from rto.recipes.base import StageRecipe
from rto.stages import DPOModule
from rto.stages.dpo import with_reference_logps


class DPORecipe(StageRecipe):
    name = "dpo"
    config_keys = ("seed", "model", "data", "sft", "pairs", "dpo")
    seed_offset = 2

    def needs(self, cfg):
        return ("sft",) + (("pairs",) if pairs_from_policy(cfg) else ())  # pairs sampled from SFT: a stage

    def train(self, ctx, upstream):
        cfg = ctx.cfg.dpo
        sft = upstream["sft"]
        policy = load_policy(upstream.path("sft"), ctx.cfg.model)  # a trainable copy; sft stays the reference
        collate = PairCollator(ctx.data.encoder)
        train_pairs, val_pairs = ctx.data.train_pairs, ctx.data.val_pairs
        precompute = cfg.precompute_ref and cfg.loss != "simpo"  # SimPO reads no reference
        if precompute:
            with ctx.off_step(sft):  # the device and precision the policy's log-probs will have
                # forward only, but a batch's logits: in micro-batches where the training step has them
                slice_size = cfg.get("micro_batch_size") or cfg.batch_size
                train_pairs, val_pairs = (with_reference_logps(sft, pairs, collate, slice_size, cfg.share_prompt)
                                          if pairs else pairs for pairs in (train_pairs, val_pairs))
        val = ctx.loader(val_pairs, collate, cfg.batch_size, shuffle=False) if val_pairs else None
        # every reference log-prob precomputed, or none read (SimPO): the module holds no reference, which
        # then stays off the training device (Lightning moves the module's models there)
        reference = None if precompute or cfg.loss == "simpo" else sft
        module = DPOModule(policy, reference, cfg.beta, instantiate(cfg.optimizer), share_prompt=cfg.share_prompt,
                           loss=cfg.loss, simpo_gamma=cfg.simpo_gamma, ipo_per_token=cfg.ipo_per_token,
                           micro_batch_size=cfg.get("micro_batch_size"),
                           max_grad_norm=cfg.get("max_grad_norm"))
        ctx.fit(self, module,
                lambda: (ctx.loader(train_pairs, collate, cfg.batch_size, shuffle=True), val),
                max_epochs=cfg.epochs)
        return policy
