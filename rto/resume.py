"""Mid-stage resume with Lightning's own checkpoints.

While a stage trains, a `ModelCheckpoint` writes `<run>/checkpoints/<stage>-resume/*.ckpt` every
`resume.every_n_steps` optimizer steps (PPO: every iteration). Lightning restores model, optimizers,
schedulers and loop position from it; the data position comes from `StatefulDataLoader`
(torchdata) whose state Lightning saves with the loop, and the modules save their own RNG
and running statistics (`on_save_checkpoint`). Each `.ckpt` gets a sidecar `<name>.json` with its
sha256 and the stage's config hash, written after the file itself: a `.ckpt` without one is an
interrupted write and is ignored (its predecessor is only deleted once the sidecar exists), a
`.ckpt` whose hash differs is corrupt and stops the run.

The `.ckpt` files are torch pickles; they are loaded with `weights_only=True` (tensors and plain
containers only), so even a tampered file cannot run code.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from rto.artifacts import CorruptArtifactError, atomic_write_text, sha256_file

log = logging.getLogger(__name__)
# torchdata's StatefulDataLoader calls a deprecated torch hook on every `iter()`; nothing to act on
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
# PPO's checkpoint is taken after an iteration's updates on purpose: that is where the next one starts
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

SIDECAR = ".json"


def sidecar(path: str | Path) -> Path:
    return Path(str(path) + SIDECAR)


class VerifiedCheckpointIO(TorchCheckpointIO):
    """Lightning's atomic torch checkpoint, plus a sha256 sidecar written after it and checked on load."""

    def __init__(self, cfg_hash: str):
        super().__init__()
        self.cfg_hash = cfg_hash

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        meta = {"sha256": sha256_file(path), "config_hash": self.cfg_hash,
                "epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}
        atomic_write_text(sidecar(path), json.dumps(meta, sort_keys=True) + "\n")

    def load_checkpoint(self, path, map_location=None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        verify_checkpoint(path, self.cfg_hash)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001 - the torch error alone does not say what to do
            raise CorruptArtifactError(f"cannot load resume checkpoint {path} ({err}); "
                                       f"delete {Path(path).parent} to restart the stage from its beginning") from err

    def remove_checkpoint(self, path) -> None:
        sidecar(path).unlink(missing_ok=True)  # first: a payload without sidecar is never trusted
        super().remove_checkpoint(path)


def verify_checkpoint(path: str | Path, cfg_hash: Optional[str]) -> dict:
    path = Path(path)
    advice = f"delete {path.parent} to restart the stage from its beginning"
    try:
        meta = json.loads(sidecar(path).read_text())
    except (OSError, ValueError) as err:
        raise CorruptArtifactError(f"resume checkpoint {path} has no readable {sidecar(path).name} ({err}); {advice}")
    if sha256_file(path) != meta.get("sha256"):
        raise CorruptArtifactError(f"resume checkpoint {path} is corrupted or truncated: "
                                   f"its sha256 does not match {sidecar(path).name}; {advice}")
    if cfg_hash is not None and meta.get("config_hash") != cfg_hash:
        raise CorruptArtifactError(
            f"resume checkpoint {path} was written by a run with a different config; run the same command "
            f"as the interrupted run, or {advice}")
    return meta


def latest_checkpoint(folder: str | Path, cfg_hash: Optional[str]) -> Optional[Path]:
    """The newest complete resume checkpoint in `folder` (verified), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    complete = []
    for ckpt in folder.glob("*.ckpt"):
        if not sidecar(ckpt).exists():
            log.warning("ignoring %s: its write was interrupted (no %s)", ckpt, sidecar(ckpt).name)
            continue
        meta = verify_checkpoint(ckpt, cfg_hash)
        complete.append(((meta.get("epoch") or 0, meta.get("global_step") or 0), ckpt))
    return max(complete)[1] if complete else None


class ResumeCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, minus the checkpoint after an epoch's last batch.

    Resuming from that one (Lightning 2.6 with a stateful loader) skips the whole next epoch; the
    checkpoint before it is used instead, and the finished stage is saved right after anyway.
    """

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        super().on_train_batch_end(trainer, *args, **kwargs)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        # what was logged up to here goes to disk first: a resume starts after this checkpoint and does
        # not log those steps again, and Lightning's CSV logger holds up to 100 steps in memory. The step
        # being checkpointed hands its `self.log` values to the loggers only after this (Lightning's
        # order), so a kill before the next checkpoint loses that one point.
        for logger in trainer.loggers:
            logger.save()
        super()._save_checkpoint(trainer, filepath)


def resume_callback(folder: str | Path, every_n_steps: int) -> ModelCheckpoint:
    """Keep only the newest checkpoint; Lightning deletes the previous one after the new one is saved."""
    return ResumeCheckpoint(dirpath=str(folder), filename="{epoch}-{step}", every_n_train_steps=every_n_steps,
                            save_top_k=1, save_last=False, enable_version_counter=False)


def fit_resumable(trainer_factory, module, loaders, *, folder: str | Path,
                  cfg_hash: str, every_n_steps: int, enabled: bool = True, callbacks: tuple = ()) -> None:
    """`trainer.fit`, resumed from the newest checkpoint in `folder` if one exists. `loaders()` gives
    `(train_loader, val_loader)`; it is called after the trainer is made (samplers read its ranks).

    A NonFiniteError leaves the run with the step, the tensor and the last good checkpoint named.
    """
    from rto.algos.finite import NonFiniteError

    kwargs = {"plugins": [VerifiedCheckpointIO(cfg_hash)], "callbacks": list(callbacks)}
    if enabled:
        kwargs["callbacks"].append(resume_callback(folder, every_n_steps))
        kwargs["enable_checkpointing"] = True
    trainer = trainer_factory(**kwargs)
    train_loader, val_loader = loaders()
    last = latest_checkpoint(folder, cfg_hash) if enabled else None
    if last is not None:
        log.info("resuming from %s", last)
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if last else None, weights_only=True)
    except NonFiniteError as err:
        good = latest_checkpoint(folder, cfg_hash) if enabled else None
        skip = "set on_nonfinite=skip to skip such batches" if err.skippable else ""
        where = (f"; last good checkpoint: {good} (the same command resumes from it once the cause is fixed"
                 + (f", or {skip})" if skip else ")")) if good else \
            "; no checkpoint of this stage was saved before it" + (f" ({skip})" if skip else "")
        raise NonFiniteError(err.name, err.step, err.count, err.total, err.where + where, err.skippable) from err

