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


def test_rerun_into_the_run_folder_continues_its_wandb_run(make_cfg, tmp_path):
    """A second command into the same folder (a resume, or the job's next stage) logs to the first one's
    W&B run: one run per job, not a killed partial curve counted as one more seed."""
    from tests.wandb_records import records

    for stage in ("sft", "rm"):
        train(make_cfg(f"stage={stage}", "logger=wandb"))
    folders = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    ids = {next(f.glob("run-*.wandb")).name[len("run-"):-len(".wandb")] for f in folders}  # a folder may end "-1"
    run_records = [r.run for f in folders for r in records(next(f.glob("*.wandb"))) if r.HasField("run")]
    assert len(ids) == 1 and {r.run_id for r in run_records} == ids


def test_rerun_into_the_run_folder_continues_its_mlflow_run(make_cfg, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    """A resume (the same command again) reopens the folder's MLflow run; other settings (the next stage)
    start a new one, since MLflow refuses to change a logged parameter."""
    for seed in (0, 0, 1):  # three commands, two settings: two runs
        train(make_cfg("stage=sft", "logger=mlflow", "experiment_name=tracker_test", f"seed={seed}"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    first, second = client.search_runs([client.get_experiment_by_name("tracker_test").experiment_id],
                                       order_by=["attributes.start_time ASC"])
    assert first.data.params["seed"] == "0" and second.data.params["seed"] == "1"
    assert first.info.status == second.info.status == "FINISHED"


def test_the_latest_wandb_run_of_a_folder_is_read_from_its_own_file(tmp_path):
    """Ids may hold a '-'; two runs of one id started in the same second get a `-1` folder suffix; an
    online attempt after an offline one counts by its start time."""
    from rto.loggers import wandb_run_id

    def run(folder: str, run_id: str) -> None:
        (tmp_path / "wandb" / folder).mkdir(parents=True)
        (tmp_path / "wandb" / folder / f"run-{run_id}.wandb").write_bytes(b"")

    assert wandb_run_id(tmp_path) is None
    run("offline-run-20261128_041925-my-run", "my-run")
    assert wandb_run_id(tmp_path) == "my-run"
    run("offline-run-20261128_041925-my-run-1", "my-run")  # the same second, the same id
    run("offline-run-20261128_041924-abcd1234", "abcd1234")  # earlier
    assert wandb_run_id(tmp_path) == "my-run"
    run("run-20261128_050000-x9", "x9")  # online, later
    assert wandb_run_id(tmp_path) == "x9"


def test_a_save_folder_shared_by_several_jobs_starts_a_run_per_job(make_cfg, tmp_path):
    """A W&B folder outside the run folder holds other jobs' runs: a job does not take their id."""
    from rto.loggers import continue_earlier_run

    shared = tmp_path / "shared"
    (shared / "wandb" / "offline-run-20261128_041925-other").mkdir(parents=True)
    (shared / "wandb" / "offline-run-20261128_041925-other" / "run-other.wandb").write_bytes(b"")
    own = make_cfg("logger=wandb", output_dir=tmp_path / "job")
    assert continue_earlier_run(own.logger.wandb, own, tmp_path / "job") == {}
    own.logger.wandb.save_dir = str(shared)
    assert continue_earlier_run(own.logger.wandb, own, tmp_path / "job") == {}
    assert continue_earlier_run(own.logger.wandb, own, shared) == {"id": "other", "resume": "allow"}
