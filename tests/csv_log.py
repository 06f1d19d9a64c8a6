"""Reading a run's Lightning CSV log (`logger=csv`: `<run>/csv/metrics.csv`)."""

from __future__ import annotations

import csv
from pathlib import Path


def logged(out: Path, key: str) -> list[float]:
    """Every logged value of `key`, in order (rows that do not log it are left out)."""
    with open(Path(out) / "csv" / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def logged_in_every_run(out: Path, key: str) -> list[float]:
    """`logged` over the CSV logs of every run in the folder, oldest first (a re-run in the same folder
    keeps the earlier log as `metrics.<n>.csv`)."""
    folder = Path(out) / "csv"
    kept = sorted(folder.glob("metrics.*.csv"), key=lambda p: int(p.name.split(".")[1]))
    values = []
    for path in [*kept, folder / "metrics.csv"]:
        with open(path) as f:
            values += [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    return values
