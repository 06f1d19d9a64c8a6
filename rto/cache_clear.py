"""`python -m rto.cache clear`: delete stage-cache entries without losing anything already done.

A job that hits the cache links its run folder's `checkpoints/<stage>` to the entry (so `stage=eval`
re-runs and resumes there find it). Deleting the entry would leave that link dangling, so each run
folder linking to it first gets its own copy: the files are hard-linked (copied on another filesystem)
into `checkpoints/.<stage>-copy-<key>/`, and the link is re-pointed there by renaming a new link over
it, in one atomic step: a job reading the stage at that moment sees the old folder or the copy, never
nothing. The linking run folders are those each hit recorded (`<key>.links`) and those found under
the given folders of run folders (`--runs`, default `<paths.root_dir>/outputs`), which also finds
links made before hits were recorded and run folders moved since.

An entry is only deleted with its lock held: a job holds its key's lock while it looks up, trains and
publishes, so an entry in use is left (and counted). Lock files stay: deleting one a job waits on would
let a third job take a fresh lock on the same key.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Optional, Sequence

from filelock import Timeout

from rto.cache import CACHED_STAGES, LINKS, StageCache, own_copy_name


def clear(cache: StageCache, stage: Optional[str] = None, runs: Sequence[Path] = ()) -> tuple[int, int, int]:
    """Returns (entries removed, entries left in use, run folders given their own copy)."""
    removed = in_use = copied = 0
    for name in (stage,) if stage else CACHED_STAGES:
        folder = cache.root / name
        if not folder.is_dir():
            continue
        keys = {p.name.split(".tmp-")[0].lstrip(".") for p in folder.iterdir() if p.is_dir()}
        found = links_under(runs, name) if keys else []
        for key in sorted(keys):
            lock = cache.lock(name, key)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                in_use += 1
                continue
            try:
                entry = cache.path(name, key)
                record = folder / f"{key}{LINKS}"
                recorded = [Path(line) for line in record.read_text().splitlines()] if record.is_file() else []
                for link in dict.fromkeys([*recorded, *found]):
                    copied += give_own_copy(link, entry, key)
                removed += entry.is_dir()
                for path in [entry, *folder.glob(f".{key}.tmp-*")]:
                    shutil.rmtree(path, ignore_errors=True)
                record.unlink(missing_ok=True)
            finally:
                lock.release()
    return removed, in_use, copied


def links_under(roots: Iterable[Path], stage: str) -> list[Path]:
    """Every `checkpoints/<stage>` link below the folders of run folders."""
    return [path for root in roots if Path(root).is_dir()
            for path in Path(root).rglob(f"checkpoints/{stage}") if path.is_symlink()]


def give_own_copy(link: Path, entry: Path, key: str) -> bool:
    """If `link` points at `entry`: copy the entry beside it and re-point the link at the copy."""
    try:
        if not (link.is_symlink() and entry.is_dir() and link.resolve() == entry.resolve()):
            return False  # gone, or pointing elsewhere since
    except (OSError, RuntimeError):  # a link in a loop, or unreadable: not a link to this entry
        return False
    own = link.with_name(own_copy_name(link.name, key))
    shutil.rmtree(own, ignore_errors=True)  # left by an interrupted clear
    try:
        shutil.copytree(entry, own, copy_function=os.link)
    except OSError:  # another filesystem: a plain copy
        shutil.rmtree(own, ignore_errors=True)
        shutil.copytree(entry, own)
    new_link = link.with_name(f".{link.name}.link-{os.getpid()}")
    new_link.unlink(missing_ok=True)
    new_link.symlink_to(own.name, target_is_directory=True)  # relative: the run folder may move
    os.replace(new_link, link)
    return True
