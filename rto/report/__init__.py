"""Reports from the files jobs write (no W&B account needed).

    python -m rto.report <multirun folder>        # a sweep: table per reward, beta and model; curves; frontier
    python -m rto.report <verdict folder>         # `python -m rto.verdict`'s output: the PPO-vs-RTO verdict

Both write `<folder>/report/{report.md, summary.json, *.png}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rto.errors import RunFolderError
from rto.report.multirun import write_multirun_report
from rto.report.verdict import write_verdict_report


def write_report(folder: Path, out: Optional[Path] = None) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"{folder} is not a folder (expected a multirun folder, outputs/<task>/multiruns/<time>, "
                                f"or the output of python -m rto.verdict)")
    out = Path(out) if out else folder / "report"
    if (folder / "protocol.json").is_file():
        return write_verdict_report(folder, out)
    return write_multirun_report(folder, out)


__all__ = ["write_report"]
