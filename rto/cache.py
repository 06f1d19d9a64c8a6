"""Stage cache: SFT, reward-model and DPO checkpoints shared by every run and sweep job that needs them.

A stage's key is a hash of everything that determines its weights: its own config, the keys of the
stages it starts from, the data config, the seed, the trainer settings that change numerics, and a
fingerprint of the training code. A sweep over PPO-only keys (`reward`, `ppo.*`) therefore trains
each upstream stage once per distinct upstream config. `dpo.beta` defaults to `beta`, so a `beta`
sweep trains one DPO model per beta (correct: they are different models).

Layout: `<cache_dir>/<stage>/<key>/` (a `save_pretrained` folder plus `manifest.json` naming the
config that produced it) and `<cache_dir>/<stage>/<key>.lock`. Concurrent jobs take the key's file
lock before training, so a second job waits and then loads instead of training the same stage
again; an entry is built in a temporary folder and renamed into place, so it is complete or absent.

    python -m rto.cache list [--stage sft]      # what is cached, with the config that made it
    python -m rto.cache clear [--stage dpo]     # delete entries no job is using (rto/cache_clear.py)
"""

from __future__ import annotations

import argparse
import logging
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from rto.artifacts import write_manifest
from rto.data.bundle import pairs_from_policy

log = logging.getLogger(__name__)

CACHED_STAGES = ("sft", "pairs", "rm", "dpo")
LINKS = ".links"  # beside an entry: the run folders that link to it


def own_copy_name(stage: str, key: str = "") -> str:
    """The folder beside a run folder's `checkpoints/<stage>` link that `clear` copies a deleted entry
    into (without a key: the prefix every such folder has)."""
    return f".{stage}-copy-{key}"


def may_run_several_processes(trainer_cfg) -> bool:
    """True unless the trainer config pins one process (devices and num_nodes both 1)."""
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1)
    return not (devices in (1, "1") and nodes in (1, "1", None))
# what each stage starts from (their keys enter its key) and the config sections that shape it
UPSTREAM = {"sft": (), "pairs": ("sft",), "rm": ("sft",), "dpo": ("sft",)}
OWN_SECTIONS = {"sft": ("data", "model", "sft", "seed"), "pairs": ("pairs",), "rm": ("rm", "reward_model"),
                "dpo": ("dpo",)}
# keys that never change the weights: where to find a checkpoint; `reward_model.critic_init`, which only
# shapes the RL stage's critic; and a model preset's `hardware` line, a description for people
IGNORED = {"checkpoint", "critic_init", "hardware"}
TRAINER_COSMETIC = {"enable_progress_bar", "enable_model_summary", "enable_checkpointing",
                    "log_every_n_steps", "default_root_dir", "logger"}
# the code a stage's result depends on; an edit there gives new keys instead of stale weights
CODE_DIRS = ("algos", "data", "models", "recipes", "rl", "stages", "tasks")  # rl: the sampler pairs use
CODE_FILES = ("context.py", "pipeline.py")
MANIFEST = "manifest.json"


def upstream_of(cfg: DictConfig, stage: str) -> tuple[str, ...]:
    """The cached stages `stage` starts from: with pairs sampled from the SFT policy, the reward model
    and DPO also start from the `pairs` stage, whose key then enters theirs."""
    extra = ("pairs",) if stage in ("rm", "dpo") and pairs_from_policy(cfg) else ()
    return UPSTREAM[stage] + extra


def _strip(node: Any, ignored: set[str]) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v, ignored) for k, v in node.items() if k not in ignored}
    return node


def code_fingerprint() -> str:
    root = Path(__file__).resolve().parent
    files = sorted(p for d in CODE_DIRS for p in (root / d).rglob("*.py")) + [root / f for f in CODE_FILES]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def trainer_settings(cfg: DictConfig) -> dict[str, Any]:
    """The trainer's settings that change the numbers (precision, devices, strategy, determinism)."""
    return _strip(OmegaConf.to_container(cfg.trainer, resolve=True), TRAINER_COSMETIC)


def stage_inputs(cfg: DictConfig, stage: str, code: Optional[str] = None) -> dict[str, Any]:
    """The resolved config that determines `stage`'s weights (what its key hashes)."""
    resolved = {name: OmegaConf.to_container(cfg[name], resolve=True) if isinstance(cfg[name], DictConfig)
                else cfg[name] for name in OWN_SECTIONS[stage]}
    inputs: dict[str, Any] = {"stage": stage, **_strip(resolved, IGNORED)}
    for upstream in upstream_of(cfg, stage):
        inputs[f"{upstream}_key"] = stage_key(cfg, upstream, code)
    if not upstream_of(cfg, stage):  # the root stage carries what every stage shares
        inputs["trainer"] = trainer_settings(cfg)
        inputs["code"] = code or code_fingerprint()
    return inputs


def stage_key(cfg: DictConfig, stage: str, code: Optional[str] = None) -> str:
    payload = json.dumps(stage_inputs(cfg, stage, code), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cacheable(cfg: DictConfig, stage: str) -> bool:
    """False when an upstream stage comes from `<upstream>.checkpoint`: the config does not describe
    those weights, so what is trained on them must not be published under a config key."""
    return stage in CACHED_STAGES and not any(
        cfg[upstream].get("checkpoint") or not cacheable(cfg, upstream) for upstream in upstream_of(cfg, stage))


class StageCache:
    """Checkpoint folders keyed by `stage_key`, safe for concurrent jobs on one filesystem."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Optional["StageCache"]:
        cache_cfg = cfg.get("cache")
        if not cache_cfg or not cache_cfg.enabled:
            return None
        if may_run_several_processes(cfg.get("trainer") or {}):
            # every rank runs the pipeline: a rank waiting on the lock its peer holds while that peer
            # waits for it in the collective would deadlock, so data-parallel runs train their stages
            log.info("stage cache off: trainer.devices/num_nodes may start several processes")
            return None
        return cls(cfg.paths.cache_dir)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> Optional[Path]:
        path = self.path(stage, key)
        return path if (path / MANIFEST).is_file() else None  # the manifest is written last

    def lock(self, stage: str, key: str) -> FileLock:
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / stage / f"{key}.lock"))

    def publish(self, stage: str, key: str, source: Path, inputs: dict[str, Any]) -> Path:
        """Copy a finished checkpoint folder into the cache (hard links where the filesystem allows)."""
        final = self.path(stage, key)
        tmp = final.with_name(f".{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        # the source's own manifest is not linked: the entry gets a new one, and writing through a
        # hard link would rewrite the run folder's manifest too
        skip = shutil.ignore_patterns(MANIFEST)
        try:
            shutil.copytree(source, tmp, copy_function=os.link, ignore=skip)
        except OSError:  # another filesystem: plain copy
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp, ignore=skip)
        source_manifest = json.loads((source / MANIFEST).read_text()) if (source / MANIFEST).is_file() else {}
        # the manifest (file hashes, verified on every hit) is written last: an entry without one is unfinished
        write_manifest(tmp, stage, source_manifest.get("config_hash"), stage=stage, key=key,
                       created=time.strftime("%Y-%m-%d %H:%M:%S"), source=str(source),
                       inputs=json.loads(json.dumps(inputs, default=str)))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def entries(self, stage: Optional[str] = None) -> Iterator[dict[str, Any]]:
        for name in (stage,) if stage else CACHED_STAGES:
            folder = self.root / name
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.is_dir() and (path / MANIFEST).is_file():
                    manifest = json.loads((path / MANIFEST).read_text())
                    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                    yield {**manifest, "path": path, "bytes": size}

    def record_link(self, stage: str, key: str, link: Path) -> None:
        """A run folder's `checkpoints/<stage>` links to this entry (`<key>.links`, one path a line), so
        `clear` can hand it its own copy first. Called under the key's lock."""
        with open(self.root / stage / f"{key}{LINKS}", "a") as f:
            f.write(f"{Path(link).absolute()}\n")


def _describe(inputs: dict[str, Any]) -> str:
    """The few inputs a person tells entries apart by."""
    parts = []
    for key in ("seed", "model", "beta", "epochs", "sft_key"):
        value = inputs.get(key)
        if key == "model" and isinstance(value, dict):
            value = value.get("pretrained") or value.get("name")
        if value is not None:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def default_paths() -> tuple[str, str]:
    """`paths.cache_dir` of the real config and the folder its run folders go to, `<paths.root_dir>/outputs`
    (so the CLI and the runs agree on one default)."""
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("config")
    return str(cfg.paths.cache_dir), str(Path(cfg.paths.root_dir) / "outputs")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rto.cache", description="List or clear the stage cache.")
    parser.add_argument("command", choices=("list", "clear"))
    parser.add_argument("--stage", choices=CACHED_STAGES, help="only this stage (default: all)")
    parser.add_argument("--dir", help="cache folder (default: paths.cache_dir of the config)")
    parser.add_argument("--runs", action="append", help="clear: a folder of run folders whose links into the "
                        "cache get a copy first (repeatable; default: <paths.root_dir>/outputs)")
    args = parser.parse_args(argv)
    # the config is composed only for a default it needs (the cache folder, or clear's run folders)
    cache_dir, outputs = default_paths() if not args.dir or (args.command == "clear" and not args.runs) \
        else (None, None)
    cache = StageCache(args.dir or cache_dir)
    if args.command == "clear":
        from rto.cache_clear import clear

        removed, in_use, copied = clear(cache, args.stage, [Path(p) for p in args.runs or [outputs]])
        print(f"removed {removed} entries from {cache.root}"
              + (f"; {copied} run folder(s) that linked to them now hold their own copy" if copied else "")
              + (f"; {in_use} left: a running job holds them (run clear again when it is done)" if in_use else ""))
        return
    rows = list(cache.entries(args.stage))
    print(f"{len(rows)} entries in {cache.root}")
    if rows:
        print("| stage | key | created | MiB | inputs |\n|---|---|---|---|---|")
        for row in rows:
            inputs = row["inputs"]
            described = _describe({**inputs, **inputs.get(row["stage"], {})})
            print(f"| {row['stage']} | {row['key']} | {row['created']} | {row['bytes'] / 2**20:.1f} | {described} |")


if __name__ == "__main__":
    main()
