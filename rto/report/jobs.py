"""Reading finished jobs from the files every job writes: `.hydra/config.yaml`, `metrics.json` and
`csv/metrics.csv` (no W&B account needed)."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rto.errors import RunFolderError

log = logging.getLogger(__name__)

CURVE_X, CURVE_Y = "ppo/iteration", "ppo/gold_reward"
VAL_X = "val/sampled_responses"
VAL_KEYS = ("val/gold_reward", "val/gold_fraction", "val/rm_score", "val/kl")


@dataclass
class Job:
    folder: Path
    cfg: DictConfig
    metrics: dict[str, float]
    curve: dict[int, float] = field(default_factory=dict)      # PPO iteration -> rollout gold reward
    val_curve: list[dict[str, float]] = field(default_factory=list)  # validation points, by sampled responses

    def get(self, key: str, default: Any = None) -> Any:
        return OmegaConf.select(self.cfg, key, default=default, throw_on_resolution_failure=False)

    @property
    def reward(self) -> str:
        return str(self.get("reward.name"))

    @property
    def beta(self) -> float:
        return float(self.get("beta"))

    @property
    def model(self) -> str:
        return str(self.get("model.name"))

    @property
    def seed(self) -> int:
        return int(self.get("seed"))


def csv_logs(path: Path) -> list[Path]:
    """`metrics.csv` and the logs a resumed run kept before it (`metrics.<n>.csv`, `rto.loggers`), oldest first."""
    kept = sorted((p for p in path.parent.glob(f"{path.stem}.*{path.suffix}") if p.stem.split(".")[-1].isdigit()),
                  key=lambda p: int(p.stem.split(".")[-1]))
    return [p for p in [*kept, path] if p.is_file()]


def read_curves(path: Path) -> tuple[dict[int, float], list[dict[str, float]]]:
    """(rollout gold per PPO iteration, validation points sorted by sampled responses) from a CSV log,
    with the earlier logs of a resumed run (a point logged again after the resume replaces its first)."""
    curve, val = {}, {}
    for log in csv_logs(path):
        with open(log) as f:
            for row in csv.DictReader(f):
                if row.get(CURVE_X) and row.get(CURVE_Y):
                    curve[int(float(row[CURVE_X]))] = float(row[CURVE_Y])
                if row.get(VAL_X):
                    point = {key: float(row[key]) for key in (VAL_X, *VAL_KEYS) if row.get(key)}
                    val.setdefault(point[VAL_X], {}).update(point)
    return curve, [val[x] for x in sorted(val)]


def job_folders(folder: Path) -> list[tuple[Path, bool]]:
    """Each job folder of a multirun folder (`<job>/.hydra/config.yaml`), in order, and whether it finished
    (`metrics.json`; a job without it failed, was killed or is still running)."""
    return [(config.parent.parent, (config.parent.parent / "metrics.json").is_file())
            for config in sorted(Path(folder).glob("*/.hydra/config.yaml"), key=lambda p: p.parts)]


def unfinished_jobs(folder: Path) -> list[Path]:
    return [job_dir for job_dir, finished in job_folders(folder) if not finished]


def load_jobs(folder: Path, required: bool = True) -> list[Job]:
    """Every finished job under a multirun folder (an unfinished one is skipped, with a warning)."""
    jobs = []
    for job_dir, finished in job_folders(folder):
        if not finished:
            log.warning("skipping %s: no metrics.json (failed or still running)", job_dir)
            continue
        curve, val = read_curves(job_dir / "csv" / "metrics.csv")
        jobs.append(Job(job_dir, OmegaConf.load(job_dir / ".hydra" / "config.yaml"),
                        json.loads((job_dir / "metrics.json").read_text()), curve, val))
    if not jobs and required:
        raise RunFolderError(f"{folder} holds no finished job (<job>/.hydra/config.yaml and <job>/metrics.json)")
    return jobs
