"""Reading a run's Lightning CSV log (`logger=csv`: `<run>/csv/metrics.csv`)."""

from __future__ import annotations

import csv
from pathlib import Path


def logged(out: Path, key: str) -> list[float]:
    """Every logged value of `key`, in order (rows that do not log it are left out)."""
    with open(Path(out) / "csv" / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
