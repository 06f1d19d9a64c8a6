"""Global statistics under data parallelism, checked without processes: each simulated rank runs
in a thread and `reduce` sums over the threads, as `all_reduce` sums over ranks."""

from __future__ import annotations

import threading

import torch

from rto.algos.advantages import RunningMoments
from rto.algos.masked import masked_whiten


class ThreadRanks:
    """A stand-in for `all_reduce(SUM)` between `world` threads."""

    def __init__(self, world: int):
        self.barrier = threading.Barrier(world)
        self.slots: list = [None] * world

    def reduce_for(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = torch.stack(self.slots).sum(0)
            self.barrier.wait()  # nobody writes the next value before everybody has read this one
            return total
        return reduce

    def run(self, fn, shards):
        results = [None] * len(shards)

        def target(rank):
            results[rank] = fn(shards[rank], self.reduce_for(rank))
        threads = [threading.Thread(target=target, args=(r,)) for r in range(len(shards))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results


def test_whitening_with_reduce_uses_the_global_batch():
    torch.manual_seed(0)
    # two ranks with responses of different widths; NaN in padding must stay harmless
    widths, rows = (3, 5), 4
    shards = []
    for width in widths:
        x = torch.randn(rows, width) * 3 + 1
        mask = torch.rand(rows, width) > 0.3
        mask[:, 0] = True
        shards.append((torch.where(mask, x, torch.full_like(x, float("nan"))), mask))
    full_x = torch.cat([torch.nn.functional.pad(x, (0, 5 - x.shape[1]), value=float("nan")) for x, _ in shards])
    full_mask = torch.cat([torch.nn.functional.pad(m, (0, 5 - m.shape[1])) for _, m in shards])
    expected = masked_whiten(full_x, full_mask).split(rows)

    got = ThreadRanks(2).run(lambda shard, reduce: masked_whiten(*shard, reduce=reduce), shards)
    for rank, width in enumerate(widths):
        torch.testing.assert_close(got[rank], expected[rank][:, :width], atol=1e-6, rtol=1e-6)
    # per-rank statistics (no reduce) give a different answer: the test can tell them apart
    assert not torch.allclose(masked_whiten(*shards[0]), expected[0][:, :3], atol=1e-3)


def test_running_moments_with_reduce_track_every_rank_alike():
    torch.manual_seed(1)
    batches = [torch.randn(2, 6) * s + s for s in (1.0, 4.0)]  # two updates; rank r gets column block r
    single = RunningMoments()
    for batch in batches:
        single.update(batch.flatten())

    def per_rank(shard_batches, reduce):
        moments = RunningMoments()
        for batch in shard_batches:
            moments.update(batch, reduce=reduce)
        return moments.mean, moments.var, moments.count

    shards = [[b[:, :2] for b in batches], [b[:, 2:] for b in batches]]  # unequal shard sizes
    for mean, var, count in ThreadRanks(2).run(per_rank, shards):
        assert count == single.count
        assert abs(mean - single.mean) < 1e-9 and abs(var - single.var) < 1e-9
