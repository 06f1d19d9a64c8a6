"""The report's statistics against numbers computed by hand."""

from __future__ import annotations

import math

import pytest

from rto.report.stats import common_kl_grid, first_reaching, interpolate_at, mean_se, paired, smooth


def test_mean_se_by_hand():
    mean, se = mean_se([1.0, 2.0, 6.0])  # mean 3, sample sd sqrt(7), se sqrt(7/3)
    assert mean == 3.0 and se == pytest.approx(math.sqrt(7 / 3))
    assert math.isnan(mean_se([4.0])[1])


def test_paired_differences_and_t_test_by_hand():
    a = {0: 5.0, 1: 7.0, 2: 6.0, 3: 1.0}
    b = {0: 4.0, 1: 4.0, 2: 4.0}  # seed 3 has no partner: left out
    out = paired(a, b)
    assert out["seeds"] == [0, 1, 2] and out["diffs"] == [1.0, 3.0, 2.0]
    assert out["mean"] == 2.0 and out["se"] == pytest.approx(1 / math.sqrt(3))
    assert out["t"] == pytest.approx(2 * math.sqrt(3))  # 3.4641
    # two-sided p of t=3.4641 with 2 degrees of freedom: 1 - t/sqrt(t^2 + 2) (closed form for df=2)
    t = 2 * math.sqrt(3)
    assert out["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert paired({0: 1.0}, {1: 1.0}) is None


def test_interpolation_between_points_and_never_outside():
    kl, gold = [1.0, 3.0, 2.0, 2.0], [0.0, 4.0, 1.0, 3.0]  # KL 2 twice: averaged to 2
    assert interpolate_at(kl, gold, [1.0, 1.5, 2.5, 3.0, 0.5, 3.5]) == [0.0, 1.0, 3.0, 4.0, None, None]


def test_common_kl_grid_is_the_overlap():
    assert common_kl_grid([(1.0, 5.0), (2.0, 8.0)], n=4) == [2.0, 3.0, 4.0, 5.0]
    assert common_kl_grid([(1.0, 2.0), (3.0, 4.0)]) == []


def test_smoothing_and_first_time_a_target_is_reached():
    assert list(smooth([0.0, 2.0, 4.0, 0.0], window=2)) == [0.0, 1.0, 3.0, 2.0]
    x, y = [0, 100, 200, 300], [0.0, 2.0, 4.0, 0.0]
    assert first_reaching(x, y, 2.0) == 100.0
    assert first_reaching(x, y, 2.5, window=2) == 200.0  # smoothed: 0, 1, 3, 2
    assert first_reaching(x, y, 5.0) is None  # not within the budget
    assert first_reaching([200, 0, 100], [4.0, 0.0, 2.0], 2.0) == 100.0  # order by x first


def test_a_resumed_runs_curves_include_the_logs_it_kept(tmp_path):
    """A resumed run keeps its earlier CSV log as `metrics.<n>.csv` (`rto.resume`); the report reads them
    all, oldest first, and a point logged again after the resume replaces the first."""
    from rto.report.jobs import read_curves

    logs = tmp_path / "csv"
    logs.mkdir()
    header = "ppo/iteration,ppo/gold_reward,val/sampled_responses,val/gold_reward\n"
    (logs / "metrics.1.csv").write_text(header + "0,0.1,,\n1,0.2,,\n,,32,0.05\n")
    (logs / "metrics.2.csv").write_text(header + "1,0.25,,\n2,0.3,,\n,,64,0.07\n")
    (logs / "metrics.csv").write_text(header + "3,0.4,,\n,,96,0.09\n")
    curve, val = read_curves(logs / "metrics.csv")
    assert curve == {0: 0.1, 1: 0.25, 2: 0.3, 3: 0.4}
    assert [(p["val/sampled_responses"], p["val/gold_reward"]) for p in val] == [(32, 0.05), (64, 0.07), (96, 0.09)]
