"""The verdict protocol's choices: final seeds apart from the tuning seed, the extra-seeds rule decided
on validation prompts only, a step run again replacing its own record, stale extra seeds never read,
and evaluation draws that differ between seeds."""

from __future__ import annotations

import json

import pytest

from rto.report import write_report
from rto.verdict import Protocol, main
from tests.conftest import compose_config
from tests.test_verdict import config, curve, policy_metrics, write_job


def final_job(out, step, arm, seed, test_gold, val_gold):
    reward = "sentence" if arm == "ppo" else "token"
    write_job(out / step / arm / str(seed), config(seed, reward),
              policy_metrics("dpo" if arm == "dpo" else "policy", test_gold),
              curve([-3, -2, -1, val_gold], [-0.3, -0.2, -0.1, 0.0]))


def test_final_frontier_and_density_run_on_seeds_other_than_the_tuning_seed(tmp_path):
    out = tmp_path / "v"
    main(["--dry-run", "--out", str(out), "--seeds", "3", "--", "debug=tiny"])
    steps = json.loads((out / "protocol.json").read_text())["steps"]
    for entry in steps:
        if entry["step"] == "tune":
            assert not any(t.startswith("seed=") for t in entry["command"].split())  # hparams_search: seed 0
        else:
            assert "seed=1,2,3" in entry["command"].split(), entry["command"]


def test_a_step_run_again_replaces_its_record(tmp_path):
    out = tmp_path / "v"
    main(["--dry-run", "--out", str(out), "--steps", "tune", "--trials", "2"])
    main(["--dry-run", "--out", str(out), "--steps", "tune", "--trials", "4"])
    main(["--dry-run", "--out", str(out), "--steps", "frontier", "--trials", "9"])
    steps = json.loads((out / "protocol.json").read_text())["steps"]
    tune = [e for e in steps if e["step"] == "tune"]
    assert len(tune) == 3 and {e["trials"] for e in tune} == {4}  # one entry per arm, the latest call's


@pytest.mark.parametrize("val_gold, close", [
    # RTO - PPO on validation: +1.0, +2.0, +1.5 -> t = 1.5 / 0.289 = 5.2 (p = 0.035): significant, no seeds
    ({"ppo": [0, 0, 0], "rto": [1.0, 2.0, 1.5]}, False),
    # +1.0, +3.0, +1.0 -> t = 2.5 (p = 0.13): more than two s.e. from zero, still not significant: seeds
    ({"ppo": [0, 0, 0], "rto": [1.0, 3.0, 1.0]}, True),
])
def test_more_seeds_are_decided_on_validation_gold_never_on_test(tmp_path, val_gold, close):
    out = tmp_path / "v"
    # the test gold says the opposite of the validation gold in both cases
    test_gold = {"ppo": [0, 0, 0], "rto": [1.0, 3.0, 1.0] if not close else [1.0, 2.0, 1.5]}
    for arm in ("ppo", "rto"):
        for i, seed in enumerate((1, 2, 3)):
            final_job(out, "final", arm, seed, test_gold[arm][i], val_gold[arm][i])
    protocol = Protocol(out, [], trials=1, seeds=3, betas=[0.1], dry_run=True)
    assert protocol.gap_is_close() is close
    assert protocol.record["more_seeds_rule"]["metric"] == "val/gold_reward"


def test_extra_seeds_are_read_only_when_the_latest_final_step_added_them(tmp_path):
    out = tmp_path / "v"
    for arm in ("ppo", "rto", "dpo"):
        for seed in (1, 2):
            final_job(out, "final", arm, seed, 1.0 + seed, 0.0)
        final_job(out, "final-more", arm, 3, 10.0, 0.0)  # left by an earlier run of the step
    protocol = {"trials": 1, "seeds": 2, "betas": [0.1], "steps": [], "best": {}, "seconds": 1.0}
    (out / "protocol.json").write_text(json.dumps(protocol))
    summary = json.loads((write_report(out) / "summary.json").read_text())
    assert summary["final"]["rows"]["RTO (token)"]["gold_reward"]["n"] == 2
    (out / "protocol.json").write_text(json.dumps({**protocol, "more_seeds": 1}))
    summary = json.loads((write_report(out) / "summary.json").read_text())
    assert summary["final"]["rows"]["RTO (token)"]["gold_reward"]["n"] == 3


def test_density_tests_each_step_of_its_ordering_and_paired_rows_name_missing_seeds(tmp_path):
    out = tmp_path / "v"
    gold = {"token": [3.0, 4.0, 3.5], "ddpo": [1.0, 3.0, 2.0], "sentence": [0.0, 1.0]}  # sentence lacks seed 3
    for variant, values in gold.items():
        for seed, g in zip((1, 2, 3), values):
            step = "final" if variant == "token" else "density"
            write_job(out / step / "rto" / f"{variant}{seed}", config(seed, variant), policy_metrics("policy", g))
    (out / "protocol.json").write_text(json.dumps({"trials": 1, "seeds": 3, "betas": [0.1], "steps": [],
                                                   "best": {}, "seconds": 1.0}))
    report = write_report(out)
    density = json.loads((report / "summary.json").read_text())["density"]
    assert density["ordering"] == ["RTO (token)", "DDPO", "PPO (sentence)"]
    assert density["paired_vs_next"]["RTO (token)"]["diffs"] == [2.0, 1.0, 1.5]
    assert density["paired_vs_next"]["DDPO"]["diffs"] == [1.0, 2.0] and density["paired_vs_next"]["DDPO"]["missing"] == [3]
    assert "PPO (sentence)" not in density["paired_vs_next"]  # the last has nothing below it
    assert "(seeds 3 missing on one side)" in (report / "report.md").read_text()


def test_evaluation_draws_follow_the_run_seed_unless_pinned(tmp_path):
    assert compose_config("seed=3", output_dir=tmp_path).eval.seed == 3
    assert compose_config("seed=4", output_dir=tmp_path).eval.seed == 4
    assert compose_config("seed=3", "eval.seed=1234", output_dir=tmp_path).eval.seed == 1234


def test_records_of_earlier_calls_stay_true(tmp_path):
    """The more-seeds decision survives a later step; a final step run again drops the earlier extra
    seeds' records (and their seconds); a record from before first_seed existed reads as seeds from 0."""
    from rto.report.verdict_markdown import protocol_line

    out = tmp_path / "v"
    out.mkdir()
    old_final = {"step": "final", "arm": "ppo", "command": "", "seconds": 5.0, "seeds": 3}
    earlier = {"steps": [old_final, {"step": "final-more", "arm": "ppo", "command": "", "seconds": 7.0}],
               "best": {"ppo": {}, "rto": {}, "dpo": {}}, "more_seeds": 2, "more_seeds_rule": {"paired": None},
               "trials": 6, "seeds": 3, "betas": [0.1], "seconds": 12.0}
    (out / "protocol.json").write_text(json.dumps(earlier))
    assert "seeds 0-2" in protocol_line(earlier)
    main(["--dry-run", "--out", str(out), "--steps", "frontier"])
    record = json.loads((out / "protocol.json").read_text())
    assert record["more_seeds"] == 2 and record["more_seeds_rule"] == {"paired": None}
    assert record["first_seed"] == 1 and "seeds 0-2" in protocol_line(record)  # the final step's own record
    main(["--dry-run", "--out", str(out), "--steps", "final"])
    record = json.loads((out / "protocol.json").read_text())
    assert "final-more" not in {e["step"] for e in record["steps"]} and "more_seeds" not in record
    assert "seeds 1-3" in protocol_line(record)
