"""Two CPU processes (DDP over gloo) against one process with the same global batch.

The real CLI runs as a subprocess, since Lightning starts the other rank by re-running the command.
The DDP run trains every stage with per-rank batches B; single-process runs with batches 2B train
one stage each from the DDP run's earlier checkpoints, so each comparison isolates one stage. The
training order deals each global step the same rows whatever the number of ranks, and PPO samples
near-greedily (temperature 1e-3) so both runs roll out the same responses.

Token-mean losses are weighted by each rank's share of the global tokens (`token_share`), and PPO
whitens and normalises with global statistics, so what remains is float summation order. Stated
tolerances (measured: losses within 1e-6, weights within 1e-5):
- SFT, DPO: every logged step loss within 1e-4; final weights within 1e-4 (max abs).
- PPO (one iteration): the logged rollout and loss metrics within 1e-4 (relative); final actor weights
  within 5e-5 (measured on an AMD EPYC: 9.7e-6, where Adam's step is ~5e-4 whatever the gradient).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_entry_point
from tests.csv_log import logged

ROOT = Path(__file__).resolve().parents[1]
# tiny run: 128 rows per set, no held-out pairs (sizes divide by the global batch: no padded rows),
# SFT long enough that near-greedy responses are not just the end token
COMMON = ("debug=tiny", "logger=csv", "data.val_fraction=0", "sft.epochs=10", "ppo.temperature=0.001",
          "print_config=false")


def batches(per_rank: int) -> list[str]:
    return [f"sft.batch_size={16 * per_rank}", f"rm.batch_size={16 * per_rank}", f"dpo.batch_size={16 * per_rank}",
            # one minibatch per PPO epoch (the whole rollout): the update is the same however it is split
            f"ppo.rollout_batch_size={8 * per_rank}", f"ppo.minibatch_size={8 * per_rank}"]


def cli(out: Path, *overrides: str, env: dict[str, str] | None = None) -> Path:
    return run_entry_point(out, *COMMON, *overrides, env=env)


def weights(out: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / stage / "model.safetensors"))


def max_weight_diff(a: Path, b: Path, stage: str) -> float:
    wa, wb = weights(a, stage), weights(b, stage)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """SFT -> RM -> DPO -> PPO (RTO) on 2 ranks, batch B per rank; evaluation on rank 0."""
    return cli(tmp_path_factory.mktemp("ddp"), "trainer=ddp_cpu", "trainer.devices=2", *batches(1))


def from_ddp(ddp: Path, *stages: str) -> list[str]:
    return [f"{stage}.checkpoint={ddp / 'checkpoints' / stage}" for stage in stages]


def test_ddp_run_finishes_with_one_table_and_every_checkpoint(ddp_run):
    assert (ddp_run / "eval_table.md").exists()
    for stage in ("sft", "rm", "dpo", "ppo"):
        assert (ddp_run / "checkpoints" / stage / "model.safetensors").exists()
    assert not list((ddp_run / "checkpoints").glob(".*tmp*")), "a rank left a temporary checkpoint"


def test_ddp_sft_matches_one_process(ddp_run, tmp_path):
    single = cli(tmp_path, "stage=sft", *batches(2))
    ddp_loss, single_loss = logged(ddp_run, "sft/loss"), logged(single, "sft/loss")
    assert len(ddp_loss) == len(single_loss) == 40  # 10 epochs x 128 rows / global batch 32
    diffs = [abs(a - b) for a, b in zip(ddp_loss, single_loss)]
    assert max(diffs) < 1e-4
    assert single_loss[0] - single_loss[-1] > 0.5  # it learns: the tolerance is far below the progress
    assert max_weight_diff(ddp_run, single, "sft") < 1e-4


def test_ddp_sft_micro_batches_match_whole_batches(ddp_run, tmp_path):
    """Each rank's batch of 16 split 5 + 5 + 5 + 1: a slice's token mean weighted by its share of the
    rank's tokens, times the rank's share of all tokens, gives the unsplit DDP run (itself the one-process
    run, above)."""
    micro = cli(tmp_path, "trainer=ddp_cpu", "trainer.devices=2", "stage=sft", *batches(1), "sft.micro_batch_size=5")
    whole_loss, micro_loss = logged(ddp_run, "sft/loss"), logged(micro, "sft/loss")
    assert len(whole_loss) == len(micro_loss) == 40
    assert max(abs(a - b) for a, b in zip(whole_loss, micro_loss)) < 1e-4
    assert max_weight_diff(ddp_run, micro, "sft") < 1e-4


# DDP's own all-reduce, each call (one gradient bucket) counted by tests/ddp_hooks.py
COUNTED_DDP = "trainer.strategy={_target_:tests.ddp_hooks.CountingDDPStrategy}"
COUNTED_STATIC_DDP = "trainer.strategy={_target_:tests.ddp_hooks.CountingDDPStrategy,static_graph:true}"


@pytest.mark.slow  # a communication count, not the numbers (those: the micro-batch tests here); ~40 s
def test_ddp_micro_batches_all_reduce_once_per_batch(tmp_path):
    """A batch split into micro-batches syncs its gradient once, in the last micro-batch's backward
    (`gradient_sync`), not once per micro-batch: as many bucket all-reduces as the unsplit run."""
    calls = {}
    for name, micro in (("whole", ()), ("micro", ("sft.micro_batch_size=5",))):
        log = tmp_path / f"{name}.log"
        cli(tmp_path / name, "trainer=ddp_cpu", "trainer.devices=2", "stage=sft", "sft.epochs=2", *batches(1),
            *micro, COUNTED_DDP, env={"RTO_TEST_COMM_LOG": str(log)})
        calls[name] = log.read_text().split()
    assert calls["whole"] and sorted(set(calls["whole"])) == ["0", "1"]  # the hook ran, on both ranks
    assert len(calls["micro"]) == len(calls["whole"])
    # DDP's static_graph: Lightning delays the reducer after the first backward, which must have synced
    # (unsynced, DDP's reducer fails an internal assert), so there every micro-batch syncs; the same run
    static = cli(tmp_path / "static", "trainer=ddp_cpu", "trainer.devices=2", "stage=sft", "sft.epochs=2",
                 *batches(1), "sft.micro_batch_size=5", COUNTED_STATIC_DDP,
                 env={"RTO_TEST_COMM_LOG": str(tmp_path / "static.log")})
    assert logged(static, "sft/loss") == pytest.approx(logged(tmp_path / "whole", "sft/loss"), abs=1e-4)
    assert len((tmp_path / "static.log").read_text().split()) > len(calls["whole"])  # each micro-batch synced


def test_ddp_dpo_matches_one_process(ddp_run, tmp_path):
    single = cli(tmp_path, "stage=dpo", *from_ddp(ddp_run, "sft"), *batches(2))
    ddp_loss, single_loss = logged(ddp_run, "dpo/loss"), logged(single, "dpo/loss")
    assert len(ddp_loss) == len(single_loss) == 4
    diffs = [abs(a - b) for a, b in zip(ddp_loss, single_loss)]
    assert max(diffs) < 1e-4
    assert max_weight_diff(ddp_run, single, "dpo") < 1e-4


@pytest.mark.slow
def test_ddp_ppo_matches_one_process(ddp_run, tmp_path):
    """RTO's PPO from the DDP run's SFT, RM and DPO: the same prompts dealt to the ranks, global reward
    normalisation and whitening, two backward passes (ppo_epochs=2), each synced across ranks; with
    each rank's minibatch of 8 whole and split 3 + 3 + 2, which syncs once per minibatch too (as many
    bucket all-reduces as the unsplit run). One iteration: near-greedy sampling (temperature 1e-3)
    multiplies the logits by 1000, so after an update the rounding of 2 ranks against 1 process can
    flip a near-tied token in the next rollout (seen on an AMD EPYC: one response of the second
    iteration differed, its gold reward -32.19 against -32.38)."""
    upstream = (*from_ddp(ddp_run, "sft", "rm", "dpo"), "ppo.iterations=1")
    single = cli(tmp_path / "single", "stage=ppo", *upstream, *batches(2))
    calls = {}
    for name, micro in (("whole", ()), ("micro", ("ppo.micro_batch_size=3",))):
        log = tmp_path / f"{name}.log"
        run = cli(tmp_path / name, "trainer=ddp_cpu", "trainer.devices=2", "stage=ppo", *upstream, *batches(1),
                  *micro, COUNTED_DDP, env={"RTO_TEST_COMM_LOG": str(log)})
        calls[name] = log.read_text().split()
        for key in ("ppo/score", "ppo/response_length", "ppo/gold_reward", "ppo/kl_k1", "ppo/dpo_reward",
                    "ppo/policy_loss", "ppo/value_loss"):
            assert logged(run, key) == pytest.approx(logged(single, key), rel=1e-4, abs=1e-6), (name, key)
        assert len(logged(run, "ppo/score")) == 1
        # Adam moves each weight about lr = 5e-4 a step whatever its gradient's size, so where a gradient
        # is near 0 the rounding shows: measured up to 9.7e-6 (EPYC; 2e-8 on a Xeon)
        assert max_weight_diff(run, single, "ppo") < 5e-5, name
    assert calls["whole"] and len(calls["micro"]) == len(calls["whole"])
    ppo, sft = weights(single, "ppo"), weights(ddp_run, "sft")
    assert max(float((ppo[k] - sft[k]).abs().max()) for k in ppo) > 1e-4  # PPO moved far more than that


NAN_ON_RANK_1 = '''
import os
import runpy
import rto.models.retokenize as retokenize

score, calls = retokenize.RewardScorer.score, []

def nan_on_rank_1(self, *args, **kwargs):
    out = score(self, *args, **kwargs)
    calls.append(1)
    if os.environ.get("LOCAL_RANK", "0") == "1" and len(calls) == 2:  # PPO iteration 2, rank 1 only
        out = out.clone()
        out[0] = float("nan")
    return out

retokenize.RewardScorer.score = nan_on_rank_1
# as `python -m rto.main`; Lightning starts rank 1 by re-running this script, so it is patched too
runpy.run_module("rto.main", run_name="__main__")
'''


def test_ddp_nan_on_one_rank_skips_the_rollout_on_every_rank(ddp_run, tmp_path):
    """`on_nonfinite=skip` under DDP: rank 1's NaN reward makes both ranks skip that rollout together
    (a rank skipping alone would leave the other waiting in the next all-reduce)."""
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script), *COMMON, "trainer=ddp_cpu", "trainer.devices=2",
                             *batches(1), "stage=ppo", "on_nonfinite=skip", "ppo.val_every=null",  # score calls: rollouts only
                             *from_ddp(ddp_run, "sft", "rm", "dpo"),
                             f"hydra.run.dir={out}", f"paths.cache_dir={out}/cache"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    text = result.stdout + result.stderr + "".join(p.read_text() for p in out.rglob("*.log"))
    assert "skipping the batch: score is not finite at step 2: 1 of" in text  # rank 1, its own NaN
    assert "skipping the batch: score is not finite at step 2 on another data-parallel rank" in text  # rank 0
    # iteration 2 never logged as trained (Lightning repeats the last row for a step that logs nothing)
    assert set(logged(out, "ppo/iteration")) == {1.0} and set(logged(ddp_run, "ppo/iteration")) == {1.0, 2.0}
    assert (out / "checkpoints" / "ppo" / "model.safetensors").exists()


ROW_SEEDED_SAMPLING = '''
import hashlib
import os
import runpy

import torch
import torch.nn.functional as F

import rto.stages.learner as learner

sample, K, calls = learner.sample_responses, int(os.environ["RTO_TEST_K"]), []


def row_seeded(model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, temperature=1.0, generator=None,
               return_logprobs=False, share_repeated=False, prefix_len=0):
    """Each response drawn from its own stream, seeded by its prompt, its place j in the prompt's group
    and the iteration: the same responses whichever rank (or how many ranks) samples them (one row at a
    time: no prompt repeats within a call and no other row shares a prefix, so `share_repeated` and
    `prefix_len` have nothing to share)."""
    calls.append(1)
    rows = []
    for i in range(prompt_ids.shape[0]):
        real = prompt_mask[i].bool()
        key = f"{prompt_ids[i][real].tolist()}/{i % K}/{len(calls)}".encode()
        g = torch.Generator(device=prompt_ids.device).manual_seed(int(hashlib.sha256(key).hexdigest()[:12], 16))
        rows.append(sample(model, prompt_ids[i:i + 1, -int(real.sum()):], prompt_mask[i:i + 1, -int(real.sum()):],
                           max_new_tokens, eos_id, pad_id, temperature, g, return_logprobs=return_logprobs))
    width = max(r[0].shape[1] for r in rows)
    padded = [torch.cat([F.pad(r[n], (0, width - r[n].shape[1]), value=v) for r in rows])
              for n, v in enumerate((pad_id, 0, 0.0)[:len(rows[0])])]
    return tuple(padded)


learner.sample_responses = row_seeded  # Lightning starts rank 1 by re-running this script: patched too
runpy.run_module("rto.main", run_name="__main__")
'''


def test_ddp_grpo_matches_one_process(ddp_run, tmp_path):
    """GRPO (k = 4, the KL as a k3 loss term, group mean/std baseline) on 2 ranks x 2 prompts against one
    process with the 4 prompts: each prompt's group is sampled and normalised on one rank, reward
    normalisation and the losses are global. Sampling at temperature 1 (a near-greedy group has no
    spread to learn from), each response from a stream of its own (the script above), so both runs
    draw the same responses."""
    script = tmp_path / "row_seeded.py"
    script.write_text(ROW_SEEDED_SAMPLING)
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "RTO_TEST_K": "4"}
    common = [a for a in COMMON if not a.startswith("ppo.temperature")]

    def run(out: Path, per_rank: int, *ddp: str) -> Path:
        result = subprocess.run([sys.executable, str(script), *common, *ddp, *batches(per_rank), "stage=ppo",
                                 "algo=grpo", "algo.samples_per_prompt=4", "ppo.val_every=null",
                                 *from_ddp(ddp_run, "sft", "rm", "dpo"), f"hydra.run.dir={out}",
                                 f"paths.cache_dir={out}/cache"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        return out

    ddp = run(tmp_path / "ddp", 1, "trainer=ddp_cpu", "trainer.devices=2")
    single = run(tmp_path / "single", 2)
    # (not ppo/advantage_mean: a token mean per rank, averaged over ranks, is not the global token mean)
    for key in ("ppo/score", "ppo/response_length", "ppo/gold_reward", "ppo/kl_k1", "ppo/dpo_reward",
                "ppo/policy_loss", "ppo/kl_loss"):
        assert logged(ddp, key) == pytest.approx(logged(single, key), rel=1e-4, abs=1e-6), key
    assert len(logged(single, "ppo/score")) == 2
    assert max_weight_diff(ddp, single, "ppo") < 1e-5
    grpo, sft = weights(ddp, "ppo"), weights(ddp_run, "sft")
    assert max(float((grpo[k] - sft[k]).abs().max()) for k in grpo) > 1e-4  # GRPO moved far more than that


@pytest.mark.slow  # three 2-rank runs, one killed: about two minutes on 2 cores
def test_ddp_ppo_killed_and_resumed_draws_what_the_uninterrupted_run_draws(ddp_run, tmp_path):
    """Each rank samples from its own random stream (seed + rank); a resumed run must restore each
    rank's, not rank 0's for all (Lightning writes rank 0's checkpoint only). Sampling at temperature 1,
    so the responses depend on the stream; deterministic kernels, one thread, so both runs round alike."""
    from tests.test_resume import comparable

    args = ["trainer=ddp_cpu", "trainer.devices=2", *from_ddp(ddp_run, "sft", "rm", "dpo"), *batches(1),  # then eval
            "ppo.temperature=1.0", "ppo.iterations=3", "ppo.val_every=null", "resume.every_n_steps=1",
            "deterministic=true", "threads=1"]
    whole = cli(tmp_path / "whole", *args)
    killed = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "rto.main", *COMMON, *args, f"hydra.run.dir={killed}",
               f"paths.cache_dir={killed}/cache"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: rank 1 is killed with rank 0
    deadline = time.monotonic() + 600
    try:
        while not list((killed / "checkpoints" / "ppo-resume").glob("*.ckpt.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "no PPO resume checkpoint in time"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (killed / "checkpoints" / "ppo").exists(), "PPO finished before the kill"
    cli(killed, *args)
    a, b = (comparable(json.loads((run / "metrics.json").read_text())) for run in (whole, killed))
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    assert max_weight_diff(whole, killed, "ppo") <= 1e-7
