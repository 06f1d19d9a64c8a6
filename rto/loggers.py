"""The job's loggers, from the config's `logger` group.

A re-run into the same run folder is a resume (or a later stage of the same job), so each tracker
goes on with the job's earlier run instead of starting a second one that a dashboard would count as
one more seed:

- the CSV log of the earlier attempt is kept beside the new one;
- W&B takes the earlier run's id (`resume="allow"`): online it continues that run; offline the new
  `offline-run-*` folder carries the same id, and `wandb sync` uploads the files of one id in order of
  start time, by its own help text (not tried against a server here; an offline attempt counts its W&B
  `_step` from 0 again, so plot against `trainer/global_step`);
- MLflow reopens the earlier run of the folder's own store when it was logged with the same settings
  (MLflow refuses to change a logged parameter, so a re-run with other overrides, such as the next
  `stage=`, starts a new MLflow run);
- TensorBoard appends to the same folder.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    keep_previous_logs(run_dir)
    return [instantiate(node, **continue_earlier_run(node, cfg, Path(run_dir)))
            for node in (cfg.get("logger") or {}).values()]


def continue_earlier_run(node: DictConfig, cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The arguments that make a logger continue the run folder's earlier run: none on a first run, when
    the config names the run itself, when the logger keeps its files outside this run folder (a save
    folder shared by several jobs holds other jobs' runs), and on ranks other than 0 (which do not log)."""
    if rank_zero_only.rank != 0:
        return {}
    target = str(node.get("_target_", ""))
    if target.endswith("WandbLogger") and node.get("id") is None and _inside(node.get("save_dir"), run_dir):
        run_id = wandb_run_id(Path(node.save_dir))
        return {"id": run_id, "resume": "allow"} if run_id else {}
    uri = str(node.get("tracking_uri") or "")
    if target.endswith("MLFlowLogger") and node.get("run_id") is None and uri.startswith("sqlite:///") \
            and _inside(uri.removeprefix("sqlite:///"), run_dir):
        run_id = mlflow_run_id(uri, str(node.experiment_name), cfg)
        return {"run_id": run_id} if run_id else {}
    return {}


def _inside(path: Optional[str], run_dir: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(run_dir.resolve())


# `<offline-run|run>-<date>_<time>-<id>`, and `-<n>` after it when two runs of one id start in the same second
WANDB_FOLDER = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-(.+?)(?:-(\d+))?$")


def wandb_run_id(folder: Path) -> Optional[str]:
    """The id of the latest W&B run under `<folder>/wandb`, None if there is none. The id is read from
    the run's own file (`run-<id>.wandb`: an id may hold a '-'); runs are ordered by the start time in
    the folder's name (so an online attempt after an offline one counts), then its same-second number."""
    runs = []
    for path in (Path(folder) / "wandb").glob("*run-*"):
        match = WANDB_FOLDER.match(path.name)
        files = sorted(path.glob("run-*.wandb")) if match and path.is_dir() and not path.is_symlink() else []
        if files:
            runs.append(((match.group(1), int(match.group(3) or 0)), files[0].name[len("run-"):-len(".wandb")]))
    return max(runs)[1] if runs else None


def mlflow_run_id(tracking_uri: str, experiment_name: str, cfg: DictConfig) -> Optional[str]:
    """The latest run of the experiment in a run folder's own SQLite store, if it logged the same settings
    as `cfg`; None for a store that does not exist yet."""
    if not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    changed = sorted(k for k, v in mlflow_params(cfg).items() if runs[0].data.params.get(k, v) != v)
    if changed:
        log.info("MLflow: a new run, the folder's earlier one was logged with other %s", ", ".join(changed[:5]))
        return None
    return runs[0].info.run_id


def mlflow_params(cfg: DictConfig) -> dict[str, str]:
    """The config as Lightning's MLFlowLogger logs it (flattened keys, values cut to 250 characters)."""
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

    params = _flatten_dict(_convert_params(OmegaConf.to_container(cfg, resolve=True)))
    return {k: str(v)[:250] for k, v in params.items()}


def keep_previous_logs(run_dir: str | Path) -> None:
    """Lightning's CSVLogger deletes an existing `metrics.csv`; a re-run (resume) keeps it as `metrics.<n>.csv`."""
    current = Path(run_dir) / "csv" / "metrics.csv"
    if current.is_file():
        n = 1
        while (kept := current.with_name(f"metrics.{n}.csv")).exists():
            n += 1
        current.rename(kept)
