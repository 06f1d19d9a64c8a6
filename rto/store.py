"""The artifact store: where a stage's checkpoint comes from and where it goes.

One interface for the three places a stage's weights can live:
- **the run folder** `<run>/checkpoints/<stage>` (or a folder the user gives as `<stage>.checkpoint`),
  verified against its manifest before it is loaded;
- **the stage cache** (`rto.cache`, shared by every run and sweep job with the same upstream config):
  a hit is verified, linked into the run folder and loaded;
- **training**: the recipe trains, the checkpoint is written atomically with its manifest (rank 0,
  after checking that every data-parallel rank holds the same weights) and published to the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

import lightning as L

from rto.artifacts import publish_folder, verify_manifest, write_manifest
from rto.cache import StageCache, cacheable, own_copy_name, stage_inputs, stage_key, upstream_of
from rto.context import RunContext
from rto.errors import MissingStageError
from rto.models.placement import off_step_device
from rto.peak_memory import stage_peak

log = logging.getLogger(__name__)


class ArtifactStore:
    """Checkpoints of one job's stages: load (run folder, `<stage>.checkpoint`, cache), train and
    publish, verify."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.cache = StageCache.from_config(ctx.cfg)
        # stages reused from the run folder although written under another config (a warning says so):
        # what this job trains on them is not what the config describes, so it is never cached
        self.stale: set[str] = set()

    def load_or_train(self, recipe, inputs: dict, may_train: bool):
        """The stage's model: an existing checkpoint if there is one, else a cache hit, else trained
        now (`may_train`: this job's `stage=` asks for it) and published."""
        path = self.existing(recipe)
        if path is not None:
            log.info("%s: loading %s", recipe.name, path)
            return recipe.load(self.ctx, path)
        with self.cache_entry(recipe) as entry:
            if entry.hit is not None:
                return recipe.load(self.ctx, entry.hit)
            if not may_train:
                raise MissingStageError(
                    f"stage={self.cfg.stage} needs the {recipe.name} checkpoint, but "
                    f"{self.ctx.ckpt_dir / recipe.name} does not exist; run stage={recipe.name} (or stage=all) "
                    f"in this run folder first, or set {recipe.name}.checkpoint=<folder>")
            model = self.train_and_publish(recipe, inputs)
            entry.publish(self.ctx.ckpt_dir / recipe.name)
            return model

    # ---- load -------------------------------------------------------------------------------
    def existing(self, recipe) -> Optional[Path]:
        """`<stage>.checkpoint` if configured, else the run folder's checkpoint; verified. None if neither."""
        configured = self.cfg[recipe.name].get("checkpoint")
        if configured:
            if not Path(configured).is_dir():
                raise MissingStageError(f"{recipe.name}.checkpoint={configured} is not a folder")
            path = Path(configured)
        else:
            path = self.ctx.ckpt_dir / recipe.name
            if not path.is_dir():
                return None
        # a folder this run wrote must have its manifest; one given as `<stage>.checkpoint` may not
        manifest = self.verify(recipe, path, require=not configured)
        if manifest is not None and manifest.get("config_hash") not in (None, self.ctx.config_hash(recipe.config_keys)):
            self.stale.add(recipe.name)
        return path

    def saved_path(self, stage: str) -> Path:
        """A finished stage's folder: later stages load a fresh copy from disk rather than deep-copying it."""
        configured = self.cfg[stage].get("checkpoint")
        path = Path(configured) if configured else self.ctx.ckpt_dir / stage
        if not path.is_dir():
            raise MissingStageError(f"{stage} must be saved before it is reused")
        return path

    def verify(self, recipe, path: Path, require: bool = True) -> Optional[dict]:
        return verify_manifest(path, recipe.name, self.ctx.config_hash(recipe.config_keys), require=require)

    def built_on_stale(self, stage: str) -> bool:
        """Whether `stage` starts, directly or not, from a stage reused under another config."""
        return any(up in self.stale or self.built_on_stale(up) for up in upstream_of(self.cfg, stage))

    # ---- train and publish ------------------------------------------------------------------
    def train_and_publish(self, recipe, inputs: dict):
        log.info("%s: training", recipe.name)
        # each stage starts from its own seed: its fresh weights do not depend on what earlier stages
        # drew (or on whether they were loaded), and 1 or N data-parallel ranks draw alike
        L.seed_everything(self.cfg.seed + recipe.seed_offset, workers=True, verbose=False)
        start = time.perf_counter()
        with stage_peak(self.ctx.metrics, recipe.name, off_step_device(self.cfg.trainer)):
            model = recipe.train(self.ctx, inputs)
        self.ctx.metrics[f"time/{recipe.name}_seconds"] = time.perf_counter() - start
        self.ctx.check_ranks_agree(recipe.name, model)
        if self.ctx.is_global_zero:  # rank 0 writes (every rank holds the same weights after DDP)
            self.write(recipe, model)
        self.ctx.barrier()  # the other ranks wait for the folder
        return model

    def write(self, recipe, model) -> None:
        """Write to a temporary folder, then rename: a crash never leaves a half checkpoint."""
        final = self.ctx.ckpt_dir / recipe.name
        tmp = self.ctx.ckpt_dir / f".{recipe.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        recipe.save(self.ctx, model, tmp)
        write_manifest(tmp, recipe.name, self.ctx.config_hash(recipe.config_keys))
        if final.is_symlink():  # a link to a cache entry: this run's own folder replaces it
            drop_link(final)
        publish_folder(tmp, final)
        shutil.rmtree(self.ctx.resume_dir(recipe.name), ignore_errors=True)  # the finished stage supersedes them

    # ---- the stage cache --------------------------------------------------------------------
    @contextlib.contextmanager
    def cache_entry(self, recipe) -> Iterator["CacheEntry"]:
        """The stage's cache entry, locked while this job looks it up, trains and publishes (a concurrent
        job with the same key waits, then hits). Without a cache (or for an uncacheable stage) an entry
        that never hits and publishes nothing."""
        key = stage_key(self.cfg, recipe.name) if self.cache and cacheable(self.cfg, recipe.name) else None
        if key is not None and self.built_on_stale(recipe.name):
            log.warning("%s: not looked up in or published to the stage cache: it starts from a stage this run "
                        "folder holds under another config (see the warning above)", recipe.name)
            key = None
        if key is None:
            yield CacheEntry(self, recipe.name, None)
            return
        with self.cache.lock(recipe.name, key):
            entry = CacheEntry(self, recipe.name, key)
            hit = self.cache.lookup(recipe.name, key)
            self.ctx.metrics[f"cache/{recipe.name}_hit"] = float(hit is not None)
            if hit is not None:
                log.info("%s: cache hit %s (%s)", recipe.name, key, hit)
                self.verify(recipe, hit)
                self.link(recipe.name, hit)
                self.cache.record_link(recipe.name, key, self.ctx.ckpt_dir / recipe.name)
                entry.hit = hit
            else:
                log.info("%s: cache miss %s", recipe.name, key)
            yield entry

    def link(self, stage: str, cached: Path) -> None:
        """The run folder points at the cached stage, so `stage=...` re-runs in it find it too."""
        self.ctx.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if (self.ctx.ckpt_dir / stage).is_symlink():
            drop_link(self.ctx.ckpt_dir / stage)
        (self.ctx.ckpt_dir / stage).symlink_to(cached.resolve(), target_is_directory=True)


def drop_link(link: Path) -> None:
    """Remove a run folder's stage link, and the folder's own copy it points at, if it is one (the copy
    `rto.cache clear` gave it, `.<stage>-copy-<key>` beside the link): nothing else would ever read it."""
    target = Path(os.readlink(link))
    link.unlink()
    if not target.is_absolute() and target.name.startswith(own_copy_name(link.name)):
        shutil.rmtree(link.parent / target, ignore_errors=True)


class CacheEntry:
    """One stage's slot in the cache for this job: `hit` is the cached folder, or None."""

    def __init__(self, store: ArtifactStore, stage: str, key: Optional[str]):
        self.store, self.stage, self.key = store, stage, key
        self.hit: Optional[Path] = None

    def publish(self, folder: Path) -> None:
        if self.key is not None:
            self.store.cache.publish(self.stage, self.key, folder, stage_inputs(self.store.cfg, self.stage))
