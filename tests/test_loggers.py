"""`logger=tensorboard` and `logger=mlflow` beside CSV and W&B: each writes its files into the run
folder, offline; a missing tracker package is named before any training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rto.errors import MachineError
from rto.main import train
from rto.preflight import preflight

ROOT = Path(__file__).resolve().parents[1]


def test_trackers_compose_alone_and_together(make_cfg):
    assert set(make_cfg("logger=tensorboard").logger) == {"tensorboard"}
    assert set(make_cfg("logger=mlflow").logger) == {"mlflow"}
    assert set(make_cfg("logger=[csv,tensorboard,mlflow,wandb]").logger) == {"csv", "tensorboard", "mlflow", "wandb"}


def test_tensorboard_writes_event_files(make_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(make_cfg("stage=sft", "logger=tensorboard"))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = events.Scalars("sft/loss")
    assert len(losses) == 4  # debug=tiny: 128 rows, batch 32, one epoch, a loss every step


def test_mlflow_logs_to_its_default_local_store_in_the_run_folder(make_cfg, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    before = {p.name for p in ROOT.iterdir()}
    train(make_cfg("stage=sft", "logger=mlflow", "experiment_name=tracker_test"))
    assert (tmp_path / "mlflow.db").is_file()
    assert {p.name for p in ROOT.iterdir()} == before  # nothing in the working directory (no ./mlruns)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tracker_test")
    assert experiment.artifact_location.endswith(str(tmp_path / "mlruns"))
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["reward"] == "token" and run.data.params["beta"] == "0.1"
    assert len(client.get_metric_history(run.info.run_id, "sft/loss")) == 4


@pytest.mark.parametrize("logger, package, extra", [("mlflow", "mlflow", "mlflow"),
                                                    ("tensorboard", "tensorboard", "tensorboard")])
def test_missing_tracker_is_named_before_training(make_cfg, monkeypatch, tmp_path, logger, package, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in (package, "tensorboardX") else real(name, *a))
    with pytest.raises(MachineError, match=rf"logger.{logger} needs the {package} package.*\.\[{extra}\]"):
        preflight(make_cfg(f"logger={logger}"))
    with pytest.raises(MachineError):  # the entry point checks it before any stage
        train(make_cfg("stage=sft", f"logger={logger}"))
    assert not (tmp_path / "checkpoints").exists()
