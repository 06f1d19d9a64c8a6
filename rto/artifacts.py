"""Atomic writes and manifests for everything a run leaves on disk.

Every artifact is written to a temporary name and renamed into place, so a crash leaves either the
old artifact or the new one, never half of one. Folders carry a `manifest.json` (what wrote them, a
hash of the config that produced them, the sha256 of every file), checked before anything is loaded:
a truncated or corrupted file is an error that names the file, never a silent load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from omegaconf import DictConfig, OmegaConf

from rto.errors import CheckpointError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class CorruptArtifactError(CheckpointError, RuntimeError):
    """An artifact on disk does not match its manifest (truncated, edited or half-written); the
    message names the file and says what to delete."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def config_hash(cfg: DictConfig, keys: Iterable[str]) -> str:
    """sha256 of the resolved config subtrees `keys` (missing keys hash as null).

    `checkpoint` entries are left out: where a stage's weights are read from is not how they were made.
    """
    picked = {key: OmegaConf.select(cfg, key, default=None) for key in keys}
    picked = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v for k, v in picked.items()}
    picked = {k: {n: x for n, x in v.items() if n != "checkpoint"} if isinstance(v, dict) else v
              for k, v in picked.items()}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _fsync_write(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def file_hashes(folder: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in exclude}


def write_manifest(folder: str | Path, kind: str, cfg_hash: Optional[str], **extra: Any) -> dict:
    """Record what wrote `folder` and the sha256 of each file in it (call before renaming it into place)."""
    folder = Path(folder)
    manifest = {"version": MANIFEST_VERSION, "kind": kind, "config_hash": cfg_hash,
                "files": file_hashes(folder), **extra}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify_manifest(folder: str | Path, kind: str, cfg_hash: Optional[str] = None,
                    require: bool = True) -> Optional[dict]:
    """Check every file of `folder` against its manifest; raise CorruptArtifactError naming the file.

    Without a manifest: an error if `require`, else a warning (a folder made elsewhere, e.g. a
    pretrained model given as `<stage>.checkpoint`). A different config hash is a warning: the
    caller decides whether reusing the artifact is right.
    """
    folder = Path(folder)
    advice = f"delete {folder} to rebuild it (the stage retrains on the next run)"
    path = folder / MANIFEST
    if not path.exists():
        if require:
            raise CorruptArtifactError(f"{folder} has no {MANIFEST}: it was not written completely; {advice}")
        log.warning("%s has no %s: its files cannot be verified", folder, MANIFEST)
        return None
    try:
        manifest = json.loads(path.read_text())
        expected = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptArtifactError(f"{path} is unreadable ({err}); {advice}") from err
    if manifest.get("kind") != kind:
        raise CorruptArtifactError(f"{folder} holds a {manifest.get('kind')!r} artifact, expected {kind!r}")
    for name, digest in expected.items():
        file = folder / name
        if not file.is_file():
            raise CorruptArtifactError(f"{file} is missing (listed in {path}); {advice}")
        if sha256_file(file) != digest:
            raise CorruptArtifactError(
                f"{file} is corrupted or truncated: its sha256 does not match {path}; {advice}")
    if cfg_hash is not None and manifest.get("config_hash") not in (None, cfg_hash):
        log.warning("%s was written with a different config than this run's (config hash %s != %s); "
                    "it is reused as is: %s", folder, str(manifest.get("config_hash"))[:12], cfg_hash[:12], advice)
    return manifest


def publish_folder(tmp: str | Path, final: str | Path) -> None:
    """Move a finished temporary folder into place, replacing an older `final`."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_folder(final: str | Path, kind: str, cfg_hash: Optional[str], write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary folder beside `final`; its manifest is added and it is renamed
    into place, so `final` is the old folder or the complete new one, never half of one."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    write_manifest(tmp, kind, cfg_hash)
    if final.is_symlink():
        final.unlink()
    publish_folder(tmp, final)
    return final
