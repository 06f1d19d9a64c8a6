"""Micro-batches for the stages before RL (`sft.micro_batch_size`, `rm.micro_batch_size`,
`dpo.micro_batch_size`; null: off). A batch's forward and backward run on slices of at most that many
examples (SFT: demonstrations; RM and DPO: pairs, a pair's two responses always in one slice), their
gradients accumulating before the batch's one optimizer step. The device then holds one slice's
activations and logits, while the optimisation stays the whole batch's (`*.batch_size` unchanged), up to
float rounding.

Each slice's loss is weighted by its share of the batch, so the accumulated gradient and the logged
statistics are the unsplit batch's: SFT's token mean by the slice's share of the batch's response tokens
(a mean of the slices' own means would weight short responses differently), RM's and DPO's means over
pairs by the slice's share of the pairs. A slice leaves out the padding columns none of its rows uses.
Validation batches run in the same slices (no gradient there, but the logits of a whole batch).

With a micro-batch size the module optimises manually (`manual_backward` per slice, one `step` per
batch, as the RL update does); null keeps Lightning's automatic optimisation and the batch in one piece.
Lightning's `accumulate_grad_batches` is not the tool: it counts batches, not tokens, so it would
mis-weight an epoch's last, smaller batch, and it is one flag for the whole trainer.

`<stage>.max_grad_norm` (null: unclipped) clips the batch's accumulated gradient before its step, in
either mode (`rto.stages.clipping`: under FSDP too, where Lightning's own clipping refuses); the norm
before clipping is logged at every step (`<stage>/grad_norm`).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from rto.algos.masked import as_bool
from rto.stages.clipping import clip_grad_norm
from rto.stages.distributed import gradient_sync

Weight = Union[float, Tensor]


def slice_rows(batch: dict[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    """The rows `rows` of a collated batch (`rto.data.collate`: prompts left-padded, responses
    right-padded), without the leading prompt columns and trailing response columns none of them uses."""
    picked = {key: value[rows] for key, value in batch.items()}
    prompt_used = as_bool(picked["prompt_mask"]).any(dim=0)
    if bool(prompt_used.any()):
        first = int(prompt_used.nonzero()[0])
        picked["prompt_ids"], picked["prompt_mask"] = picked["prompt_ids"][:, first:], picked["prompt_mask"][:, first:]
    response_used = as_bool(picked["response_mask"]).any(dim=0)
    end = int(response_used.nonzero()[-1]) + 1 if bool(response_used.any()) else 1
    picked["response_ids"], picked["response_mask"] = picked["response_ids"][:, :end], picked["response_mask"][:, :end]
    return picked


def micro_batches(batch: dict[str, Tensor], size: Optional[int], pairs: bool) -> list[dict[str, Tensor]]:
    """Consecutive slices of at most `size` examples; `[batch]` itself when `size` is null or not
    smaller. `pairs`: a `PairCollator` batch (chosen rows, then rejected rows), sliced by pair, each
    slice again its chosen rows, then its rejected rows."""
    rows = batch["response_ids"].shape[0]
    n = rows // 2 if pairs else rows
    if not size or size >= n:
        return [batch]
    device = batch["response_ids"].device
    slices = []
    for start in range(0, n, size):
        index = torch.arange(start, min(start + size, n), device=device)
        slices.append(slice_rows(batch, torch.cat([index, index + n]) if pairs else index))
    return slices


class AccumulatedSteps:
    """Mixin of the SFT, reward-model and DPO LightningModules (with `NonFiniteGuard`). A module sets
    `stage` (its metrics' prefix) and `pairs`, calls `configure_steps` in its constructor, and
    provides `losses` (one slice's loss and statistics, each a mean over the slice) and, where a
    loss is not a mean over examples, `shares`."""

    stage: str = ""
    pairs: bool = False
    micro_batch_size: Optional[int] = None
    max_grad_norm: Optional[float] = None

    def configure_steps(self, micro_batch_size: Optional[int], max_grad_norm: Optional[float] = None) -> None:
        self.micro_batch_size, self.max_grad_norm = micro_batch_size, max_grad_norm
        self.automatic_optimization = micro_batch_size is None

    def on_before_optimizer_step(self, optimizer) -> None:
        """Lightning calls it right before every step, automatic or manual, on the batch's accumulated
        gradient: its norm logged (before any clip), then clipped to the stage's `max_grad_norm` where
        set (`trainer.gradient_clip_val` is refused together with it, and clips after this hook)."""
        norm = clip_grad_norm(self, optimizer, self.max_grad_norm)
        if norm is not None:  # None: a skipped batch, no gradient
            self.log(f"{self.stage}/grad_norm", norm, on_step=True, on_epoch=False)

    def losses(self, batch: dict, train: bool) -> Optional[tuple[Tensor, dict[str, Tensor]]]:
        """`(loss, statistics)` of one slice; None where a training value was not finite (the batch is
        skipped under `on_nonfinite=skip`)."""
        raise NotImplementedError

    def shares(self, batch: dict, slices: list[dict], train: bool) -> list[Weight]:
        """Each slice's weight in the batch: its share of the examples."""
        n = batch["response_ids"].shape[0]
        return [1.0] if len(slices) == 1 else [s["response_ids"].shape[0] / n for s in slices]

    def examples(self, batch: dict) -> int:
        return batch["response_ids"].shape[0] // (2 if self.pairs else 1)

    def accumulate(self, batch: dict, train: bool) -> Optional[dict[str, Tensor]]:
        """The batch's loss and statistics, weighted sums over its slices. Under manual optimisation
        a training slice's backward runs as soon as its loss is known (its graph is freed before the
        next slice's forward); otherwise the returned loss carries the graph for Lightning's backward."""
        slices = micro_batches(batch, self.micro_batch_size, self.pairs)
        backward = train and not self.automatic_optimization
        totals: dict[str, Tensor] = {}
        for i, (piece, weight) in enumerate(zip(slices, self.shares(batch, slices, train))):
            out = self.losses(piece, train)
            if out is None:
                return None
            loss, stats = out
            if backward:
                with gradient_sync(self, sync=i == len(slices) - 1):  # DDP: one all-reduce per batch
                    self.manual_backward(weight * loss)
                loss = loss.detach()
            for key, value in {"loss": loss, **{k: v.detach() for k, v in stats.items()}}.items():
                totals[key] = totals[key] + weight * value if key in totals else weight * value
        return totals

    def log_totals(self, totals: dict[str, Tensor], batch: dict, prefix: str) -> None:
        for key, value in totals.items():  # sync_dist: under DDP the mean over ranks
            self.log(f"{self.stage}/{prefix}{key}", value, prog_bar=key == "loss", batch_size=self.examples(batch),
                     sync_dist=True)

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            totals = self.accumulate(batch, train=True)
            if totals is None:
                return None  # Lightning skips the optimizer step
            self.log_totals(totals, batch, "")
            return totals["loss"]
        optimizer = self.optimizers()
        optimizer.zero_grad()
        totals = self.accumulate(batch, train=True)
        if totals is None:
            optimizer.zero_grad()  # nothing of this batch reaches the parameters, but the step is
            optimizer.step()  # counted (no gradient: no change), as Lightning counts a skipped automatic one
            return None
        optimizer.step()  # clipped in on_before_optimizer_step
        self.log_totals(totals, batch, "")
        return None

    def validation_step(self, batch, batch_idx):
        self.log_totals(self.accumulate(batch, train=False), batch, "val_")
