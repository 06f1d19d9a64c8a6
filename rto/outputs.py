"""What a job leaves for people to read: the evaluation table, the metrics, sample generations and
the loggers' summaries. Every file is written atomically (`rto.artifacts`)."""

from __future__ import annotations

import json
from pathlib import Path

from rto.artifacts import atomic_write_text


class OutputWriter:
    """Writes a job's results into its run folder and hands them to its loggers."""

    def __init__(self, out: Path, loggers: list):
        self.out = Path(out)
        self.loggers = loggers

    def write(self, table: str, metrics: dict[str, float], samples: list[dict]) -> None:
        """`eval_table.md`, `metrics.json`, `samples.jsonl`; the metrics as the loggers' summary and the
        samples as their `eval/samples` table (where the logger has tables)."""
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "eval_table.md", table + "\n")
        atomic_write_text(self.out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        atomic_write_text(self.out / "samples.jsonl", "".join(json.dumps(row) + "\n" for row in samples))
        for logger in self.loggers:
            logger.log_metrics(metrics)
            if hasattr(logger, "log_table") and samples:
                logger.log_table("eval/samples", columns=list(samples[0]), data=[list(r.values()) for r in samples])
            logger.save()
