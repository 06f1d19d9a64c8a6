"""The sample-efficiency curve: the policy's gold reward on a fixed subset of validation prompts,
measured during RL every few iterations (never on training rollouts, never on test prompts).

Logged as `val/gold_reward` (where the task has a gold reward; `val/gold_fraction`, its share of the
optimum, where the task knows that), `val/rm_score` and `val/kl`, with
`val/sampled_responses` (responses the learner had sampled so far) and `val/iteration`, before the
first iteration and after every `every`-th and the last. The subset, its sampling seed and settings
are the same at every point, so the curve moves only because the policy does.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from rto.algos.finite import NonFiniteError
from rto.data.collate import Encoder
from rto.evaluation import sample_policy
from rto.models.precision import computing_in


class ValidationCurve(Callback):
    def __init__(self, prompts: list, encoder: Encoder, decode: Callable, gold: Optional[Callable], *,
                 optimum: Optional[Callable] = None, every: int,
                 iterations: int, responses_per_rank: int, batch_size: int, max_new_tokens: int,
                 temperature: float, seed: int, micro_batch_size: Optional[int] = None):
        self.prompts, self.encoder, self.decode, self.gold = prompts, encoder, decode, gold
        self.optimum = optimum
        # an iteration samples `responses_per_rank` on every data-parallel rank
        self.every, self.iterations, self.responses_per_rank = every, iterations, responses_per_rank
        self.sampling = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                             micro_batch_size=micro_batch_size)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:  # the starting policy (a resumed run starts later and has logged it already)
            self.measure(trainer, pl_module, iteration=0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        iteration = batch_idx + 1
        if iteration % self.every == 0 or iteration == self.iterations:
            self.measure(trainer, pl_module, iteration)

    @torch.no_grad()
    def measure(self, trainer, pl_module, iteration: int) -> None:
        # each data-parallel rank scores its own share of the subset; the sums are added over ranks
        shard = self.prompts[trainer.global_rank::trainer.world_size]
        totals = torch.zeros(6, dtype=torch.float64)  # prompts, gold, RM score, KL, gold fraction, NaN draws
        if shard:
            # sample_policy runs every model in inference mode (rto/rl/modes.py); the next iteration sets its own.
            # In the trainer's precision, as the rollouts are sampled (outside a step: no autocast of Lightning's)
            models = (pl_module.actor, pl_module.reference, pl_module.reward_model)
            try:
                with computing_in(trainer.precision, *models):
                    samples = sample_policy(*models, shard, self.encoder, decode=self.decode, gold=self.gold,
                                            **self.sampling)
            except NonFiniteError as err:  # decided over all ranks below, so that no rank waits in the reduce
                samples, totals[5] = None, float(err.count or 1)
            if samples is not None:
                gold = samples.gold if samples.gold is not None else np.zeros(len(shard))
                fraction = gold / self.optimum(shard) if self.optimum is not None else np.zeros(len(shard))
                totals[:5] += torch.tensor([len(shard), gold.sum(), samples.rm_score.sum(), samples.kl.sum(),
                                            fraction.sum()], dtype=torch.float64)
        totals = trainer.strategy.reduce(totals.to(pl_module.device), reduce_op="sum").cpu()
        if float(totals[5]) > 0:  # nothing to skip here: on_nonfinite=skip covers training batches only
            raise NonFiniteError(f"the policy's sampling distribution on the validation prompts (after iteration "
                                 f"{iteration})", step=trainer.global_step, count=None, skippable=False)
        n = float(totals[0])
        metrics = {"val/iteration": float(iteration),
                   "val/sampled_responses": float(iteration * self.responses_per_rank * trainer.world_size),
                   "val/rm_score": float(totals[2]) / n, "val/kl": float(totals[3]) / n}
        if self.gold is not None:
            metrics["val/gold_reward"] = float(totals[1]) / n
            if self.optimum is not None:
                metrics["val/gold_fraction"] = float(totals[4]) / n
        for logger in trainer.loggers:  # straight to the loggers: Lightning's `log` is not allowed in every hook
            logger.log_metrics(metrics, step=trainer.global_step)
