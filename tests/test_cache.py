"""Stage cache keys, concurrency and CLI (no training)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from rto.cache import StageCache, cacheable, main as cache_main, stage_key
from tests.conftest import compose_config


def keys(tmp_path, *overrides) -> dict[str, str]:
    cfg = compose_config(*overrides, output_dir=tmp_path)
    return {stage: stage_key(cfg, stage, code="fixed") for stage in ("sft", "rm", "dpo")}


def test_ppo_only_keys_share_every_upstream_stage(tmp_path):
    base = keys(tmp_path, "reward=token", "beta=0.1")
    for overrides in (["reward=sentence"], ["ppo.iterations=7", "reward.dpo_scale=0.3"], ["sft.checkpoint=/x"],
                      ["logger=none"], ["trainer.enable_progress_bar=true"], ["print_config=true"], ["threads=1"],
                      # kernels' float rounding only (README, "Stage cache")
                      ["compile=true"], ["cpu_prepack.enabled=false"],
                      ["+model.hardware=any description"]):
        assert keys(tmp_path, "reward=token", "beta=0.1", *overrides) == base, overrides


def test_keys_change_with_what_determines_the_stage(tmp_path):
    base = keys(tmp_path)
    beta = keys(tmp_path, "beta=0.2")  # dpo.beta follows beta: one DPO per beta, SFT and RM shared
    assert (beta["sft"], beta["rm"]) == (base["sft"], base["rm"]) and beta["dpo"] != base["dpo"]
    rm_only = keys(tmp_path, "rm.epochs=3")
    assert rm_only["sft"] == base["sft"] and rm_only["rm"] != base["rm"] and rm_only["dpo"] == base["dpo"]
    for overrides in (["seed=1"], ["model=small"], ["data.n_sft=64"], ["sft.optimizer.lr=0.01"]):
        changed = keys(tmp_path, *overrides)
        assert all(changed[s] != base[s] for s in changed), overrides  # upstream keys propagate
    cfg = compose_config(output_dir=tmp_path)
    assert stage_key(cfg, "sft", code="a") != stage_key(cfg, "sft", code="b")  # edited training code
    # the reward model's own backbone: another one is another reward model (not the critic's start)
    a, b = (keys(tmp_path, "reward_model=pretrained", f"reward_model.path=/models/{name}") for name in "ab")
    assert a["rm"] != b["rm"] and a["rm"] != base["rm"] and (a["sft"], a["dpo"]) == (base["sft"], base["dpo"])
    assert keys(tmp_path, "reward_model=pretrained", "reward_model.path=/models/a",
                "reward_model.critic_init=policy")["rm"] == a["rm"]


def test_stages_built_on_a_given_checkpoint_are_not_cached(tmp_path):
    cfg = compose_config("sft.checkpoint=/some/sft", output_dir=tmp_path)
    assert not cacheable(cfg, "rm") and not cacheable(cfg, "dpo") and not cacheable(cfg, "ppo")
    cfg = compose_config("rm.checkpoint=/some/rm", output_dir=tmp_path)
    assert cacheable(cfg, "sft") and cacheable(cfg, "dpo")


def _train_once(root: str, out: str, counter: str) -> None:
    """What `Run.obtain` does on one key: lock, look up, else train, publish."""
    cache = StageCache(root)
    with cache.lock("sft", "k"):
        if cache.lookup("sft", "k") is None:
            with open(counter, "a") as f:
                f.write("trained\n")
            time.sleep(0.5)  # long enough for the other process to be waiting on the lock
            src = Path(out)
            src.mkdir(parents=True, exist_ok=True)
            (src / "model.safetensors").write_bytes(b"weights")
            cache.publish("sft", "k", src, {"stage": "sft"})


def test_concurrent_jobs_train_a_key_once(tmp_path):
    counter = tmp_path / "count.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_train_once, args=(str(tmp_path / "cache"), str(tmp_path / f"run{i}"), str(counter)))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counter.read_text().splitlines() == ["trained"]
    entry = StageCache(tmp_path / "cache").lookup("sft", "k")
    assert (entry / "model.safetensors").read_bytes() == b"weights"
    assert not list((tmp_path / "cache" / "sft").glob(".*tmp*"))  # no temporary folder left behind


def test_cli_lists_and_clears(tmp_path, capsys):
    cache = StageCache(tmp_path)
    for stage in ("sft", "dpo"):
        src = tmp_path / f"src-{stage}"
        src.mkdir()
        (src / "config.json").write_text("{}")
        cache.publish(stage, f"{stage}key", src, {"stage": stage, "seed": 3, stage: {"epochs": 2}})
    cache_main(["list", "--dir", str(tmp_path)])
    listing = capsys.readouterr().out
    assert "2 entries" in listing and "| sft | sftkey |" in listing and "seed=3" in listing
    cache_main(["clear", "--stage", "dpo", "--dir", str(tmp_path), "--runs", str(tmp_path)])
    assert "removed 1 entries" in capsys.readouterr().out
    assert [e["stage"] for e in cache.entries()] == ["sft"]
    cache_main(["clear", "--dir", str(tmp_path), "--runs", str(tmp_path)])
    assert list(cache.entries()) == []


def test_cache_can_be_disabled(tmp_path):
    assert StageCache.from_config(compose_config("cache.enabled=false", output_dir=tmp_path)) is None
    cache = StageCache.from_config(compose_config(output_dir=tmp_path))
    assert cache is not None and cache.root == tmp_path / "cache"


@pytest.mark.parametrize("bad", ["--stage=ppo", "--stage=all"])
def test_cli_rejects_an_uncached_stage(tmp_path, bad):
    with pytest.raises(SystemExit):
        cache_main(["list", bad, "--dir", str(tmp_path)])


def test_cache_is_off_when_the_trainer_may_start_several_processes(tmp_path):
    # every DDP rank runs the pipeline; a shared lock would deadlock the ranks' collectives
    assert StageCache.from_config(compose_config("trainer=ddp_cpu", output_dir=tmp_path)) is None
    assert StageCache.from_config(compose_config("trainer=ddp", output_dir=tmp_path)) is None
    assert StageCache.from_config(compose_config("trainer=cpu", output_dir=tmp_path)) is not None


def test_clear_leaves_entries_in_use_and_gives_linked_run_folders_their_own_copy(tmp_path):
    """A job that hit the cache links its run folder to the entry: clearing the cache hands that folder a
    copy first (a re-run there still finds its stage). An entry whose lock a job holds is left."""
    import subprocess
    import sys

    from rto.main import train

    cache_dir = tmp_path / "cache"

    def job(stage: str, run: str) -> None:
        cfg = compose_config(f"stage={stage}", output_dir=tmp_path / run)
        cfg.paths.cache_dir = str(cache_dir)  # one cache for both run folders
        train(cfg)

    for run in ("a", "b", "c"):  # b and c hit the entry a published
        job("sft", run)
    linked, unrecorded = (tmp_path / run / "checkpoints" / "sft" for run in ("b", "c"))
    assert linked.is_symlink() and unrecorded.is_symlink()
    cache_dir_sft = cache_dir / "sft"
    (links_file,) = cache_dir_sft.glob("*.links")
    links_file.write_text(f"{linked.absolute()}\n")  # c linked before hits were recorded: found by the scan
    weights = (linked / "model.safetensors").read_bytes()
    cache = StageCache(cache_dir)
    (sft_key,) = [e["key"] for e in cache.entries("sft")]
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    cache.publish("dpo", "busy", src, {"stage": "dpo"})

    def clear() -> str:
        return subprocess.run([sys.executable, "-m", "rto.cache", "clear", "--dir", str(cache_dir), "--runs",
                               str(tmp_path)], check=True,
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout

    with cache.lock("dpo", "busy"):  # a job is using this entry
        out = clear()
    assert "removed 1 entries" in out and "2 run folder(s)" in out and "1 left" in out
    for link in (linked, unrecorded):  # now a relative link to the run folder's own copy
        assert os.readlink(link) == f".sft-copy-{sft_key}" and (link / "model.safetensors").read_bytes() == weights
    assert cache.lookup("sft", sft_key) is None and cache.lookup("dpo", "busy") is not None
    assert "removed 1 entries" in clear() and list(cache.entries()) == []
    job("rm", "b")  # finds its SFT in its own folder


def test_replacing_a_stage_link_drops_the_copy_clear_gave_it_and_never_a_cache_entry(tmp_path):
    from rto.store import drop_link

    ckpt, entry = tmp_path / "run" / "checkpoints", tmp_path / "cache" / "sft" / "k"
    (ckpt / ".sft-copy-k").mkdir(parents=True)
    entry.mkdir(parents=True)
    (ckpt / "sft").symlink_to(".sft-copy-k", target_is_directory=True)
    drop_link(ckpt / "sft")
    assert not (ckpt / "sft").exists() and not (ckpt / ".sft-copy-k").exists()
    (ckpt / "sft").symlink_to(entry, target_is_directory=True)
    drop_link(ckpt / "sft")
    assert not (ckpt / "sft").is_symlink() and entry.is_dir()


def test_clear_skips_a_recorded_link_in_a_loop(tmp_path):
    from rto.cache_clear import give_own_copy

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    (tmp_path / "entry").mkdir()
    assert give_own_copy(loop, tmp_path / "entry", "k") is False
