"""Preference pairs sampled from the SFT policy (data with `pairs_from_policy`: the sentiment task):
two samples per training prompt, the winner drawn from Bradley-Terry on the task's gold at
`data.bt_temperature`. Sampling a real model takes minutes, so the pairs are a stage of their own,
saved (`pairs.jsonl`, `labels.json`) and shared through the stage cache like a model."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from rto.data.bundle import split_pairs
from rto.data.validate import EmptySetError
from rto.recipes.base import StageRecipe
from rto.tasks.sentiment.labels import bradley_terry_labels
from rto.tasks.sentiment.sampling import sample_response_pairs

log = logging.getLogger(__name__)


@dataclass
class PreferencePairs:
    rows: list[dict]   # {"prompt", "chosen", "rejected"}
    labels: dict       # how the labels were drawn and how often they follow the gold


class PairsRecipe(StageRecipe):
    name = "pairs"
    config_keys = ("seed", "model", "data", "sft", "pairs")
    seed_offset = 4

    def needs(self, cfg):
        return ("sft",)

    def train(self, ctx, upstream) -> PreferencePairs:
        cfg = ctx.cfg.pairs
        prompts = ctx.data.train_prompts[:cfg.n_prompts]
        if ctx.data.gold is None:
            raise EmptySetError(f"data={ctx.cfg.data.name} has no gold reward to label sampled pairs with")
        with ctx.off_step(upstream["sft"]):  # the run's device and precision
            samples = sample_response_pairs(upstream["sft"], ctx.data.encoder, prompts, cfg.max_new_tokens,
                                            cfg.temperature, seed=ctx.cfg.seed, batch_size=cfg.batch_size)
        rows, stats = bradley_terry_labels(prompts, samples.first, samples.second, ctx.data.gold,
                                           ctx.cfg.data.bt_temperature, seed=ctx.cfg.seed)
        ended = samples.first_ended + samples.second_ended
        labels = {**asdict(stats), "temperature": ctx.cfg.data.bt_temperature, "sampling_seconds": samples.seconds,
                  "sampled_tokens": samples.n_tokens, "ended_share": sum(ended) / max(1, len(ended))}
        log.info("pairs: %d pairs from %d prompts in %.0f s; labels agree with the gold ranking %.1f%% of the time "
                 "(%.1f%% expected at T=%g)", stats.n_pairs, len(prompts), samples.seconds,
                 100 * stats.realised_agreement, 100 * stats.expected_agreement, ctx.cfg.data.bt_temperature)
        return PreferencePairs(rows, labels)

    def save(self, ctx, pairs: PreferencePairs, folder: Path) -> None:
        (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in pairs.rows))
        (folder / "labels.json").write_text(json.dumps(pairs.labels, indent=2, sort_keys=True) + "\n")

    def load(self, ctx, path: Path) -> PreferencePairs:
        rows = [json.loads(line) for line in (path / "pairs.jsonl").read_text().splitlines() if line]
        return PreferencePairs(rows, json.loads((path / "labels.json").read_text()))

    def report(self, ctx, pairs: PreferencePairs, upstream) -> None:
        """The pairs become the data's preference pairs (the reward model and DPO read them next)."""
        if not pairs.rows:
            raise EmptySetError("the pairs stage made no pair (every prompt's two samples were identical): "
                                "raise pairs.temperature or pairs.n_prompts")
        ctx.data.train_pairs, ctx.data.val_pairs = split_pairs(pairs.rows, ctx.cfg.data.val_fraction, ctx.cfg.seed)
        ctx.check_reward_model_pairs()  # sampled in the policy's tokens: now in a separate RM's
        for key in ("n_pairs", "realised_agreement", "expected_agreement", "ended_share"):
            ctx.metrics[f"pairs/{key}"] = float(pairs.labels[key])
