"""The statistics the reports print, as small pure functions (each tested against hand-computed numbers).

- `mean_se`: mean and standard error over seeds.
- `paired`: per-seed differences between two arms that share seeds, their mean, standard error and a
  two-sided paired t-test.
- `interpolate_at`: an arm's gold reward at given KL values, by linear interpolation between its
  (KL, gold) points; nothing outside the KL range it covers.
- `smooth` and `first_reaching`: the sample-efficiency reading: sampled responses needed before a
  curve, smoothed over a window of points, first reaches a target (None: not within the budget).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy import stats as scipy_stats


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (nan for a single value)."""
    arr = np.asarray(values, dtype=float)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else float("nan")
    return float(arr.mean()), se


def paired(a: dict[int, float], b: dict[int, float]) -> Optional[dict]:
    """`a - b` over the seeds both have: differences per seed, mean, s.e., t statistic and two-sided
    p-value of the paired t-test (nan with fewer than two seeds or no spread), and the seeds only one of
    them has (`missing`). None without a shared seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = np.array([a[s] - b[s] for s in seeds], dtype=float)
    mean, se = mean_se(diffs)
    if len(diffs) > 1 and se > 1e-12 * max(1.0, abs(mean)):  # equal differences: no t-test (float noise aside)
        t = mean / se
        p = float(2 * scipy_stats.t.sf(abs(t), df=len(diffs) - 1))
    else:
        t = p = float("nan")
    # seeds only one side has (a failed or missing job): left out of the pair, and said so
    return {"seeds": seeds, "missing": sorted(set(a) ^ set(b)), "diffs": diffs.tolist(), "mean": mean, "se": se,
            "t": float(t), "p": p}


def interpolate_at(kl: Sequence[float], gold: Sequence[float], at: Sequence[float]) -> list[Optional[float]]:
    """Gold at each KL in `at`, linearly interpolated between the points sorted by KL; None outside
    [min KL, max KL] (no extrapolation). Points with equal KL are averaged first."""
    by_kl: dict[float, list[float]] = {}
    for x, y in zip(kl, gold):
        by_kl.setdefault(float(x), []).append(float(y))
    xs = np.array(sorted(by_kl))
    ys = np.array([np.mean(by_kl[x]) for x in xs])
    return [float(np.interp(x, xs, ys)) if len(xs) and xs[0] <= x <= xs[-1] else None for x in at]


def common_kl_grid(ranges: Sequence[tuple[float, float]], n: int = 5) -> list[float]:
    """`n` evenly spaced KL values inside the range every arm covers (empty if the ranges do not overlap)."""
    if not ranges:
        return []
    low, high = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if low > high:
        return []
    return [float(x) for x in np.linspace(low, high, n)] if high > low else [float(low)]


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over `window` points (fewer at the start): no look-ahead, so a smoothed
    curve reaches a target no earlier than the points it averages allow."""
    arr = np.asarray(values, dtype=float)
    return np.array([arr[max(0, i - window + 1):i + 1].mean() for i in range(len(arr))])


def first_reaching(x: Sequence[float], y: Sequence[float], target: float, window: int = 1) -> Optional[float]:
    """The first `x` (sampled responses) at which the smoothed `y` is >= `target`; None if never."""
    order = np.argsort(np.asarray(x, dtype=float), kind="stable")
    xs, ys = np.asarray(x, dtype=float)[order], smooth(np.asarray(y, dtype=float)[order], window)
    hits = np.nonzero(ys >= target)[0]
    return float(xs[hits[0]]) if len(hits) else None
