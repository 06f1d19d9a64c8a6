"""Bad config values fail before training; a path without a model is a clear error; a machine or a
folder the config asks for is checked before training; loading a local model makes no network call."""

from __future__ import annotations

import socket

import pytest

from rto.config import ConfigError, validate
from rto.errors import MachineError, MissingStageError, ModelError
from rto.main import train
from rto.models import load_policy
from rto.preflight import preflight
from tests.conftest import compose_config


@pytest.mark.parametrize("override, key", [("on_nonfinite=ignore", "on_nonfinite"),
                                           ("resume.every_n_steps=0", "resume.every_n_steps"),
                                           ("data.on_invalid=warn", "data.on_invalid"),
                                           ("eval.n_prompts=1", "eval.n_prompts must be null or an integer >= 2"),
                                           ("data=jsonl", "data.path has no value"),
                                           ("model=hf", "model.pretrained has no value"),
                                           ("model.num_heads=${package_dir:no_such_package}",
                                            "model.num_heads .*: cannot be resolved .*'no_such_package' is not installed")])
def test_reliability_config_values_are_checked(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(override, output_dir=tmp_path))


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_model_path_without_a_model_is_a_clear_error(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(ModelError, match=rf"model.pretrained={path}: no model (at|in) "):
        train(compose_config(f"model.pretrained={path}", "stage=sft", output_dir=tmp_path / "run"))


@pytest.mark.parametrize("override, error, match", [
    ("sft.checkpoint=/no/such/folder", MissingStageError, "sft.checkpoint=/no/such/folder is not a folder"),
    ("ppo.checkpoint=/no/such/folder", MissingStageError, "ppo.checkpoint=/no/such/folder is not a folder"),
    ("eval.judge=/no/such/folder", ModelError, "eval.judge=/no/such/folder is not a folder"),
    ("trainer.accelerator=cuda", MachineError, "trainer.accelerator=cuda .*needs a CUDA GPU"),
])
def test_folders_and_machine_are_checked_before_training(tmp_path, monkeypatch, override, error, match):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the GPU check holds on a GPU machine too
    with pytest.raises(error, match=match):
        train(compose_config(override, output_dir=tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_more_gpus_than_the_machine_has(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    preflight(compose_config("trainer=gpu", output_dir=tmp_path))
    with pytest.raises(MachineError, match=r"trainer.devices=2, but this machine has 1 GPU"):
        preflight(compose_config("trainer=gpu", "trainer.devices=2", output_dir=tmp_path))


def test_embedded_task_sizes_name_their_data_key(tmp_path):
    from rto.data import load_data
    for override, match in (("data.n_train_prompts=0", "data.n_sft=128 needs n_train_prompts > 0"),
                            ("data.n_pairs=-1", "data.n_pairs must be >= 0, got -1"),
                            ("data.n_test_prompts=100000", "data.n_test_prompts=100000 exceeds the")):
        with pytest.raises(ConfigError, match=match):
            load_data(compose_config(override, output_dir=tmp_path).data)


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test (and HF_HUB_OFFLINE is unset, so nothing hides it)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network call to {address} during a local run")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return attempts


def test_local_model_loads_without_network(tmp_path, no_network):
    train(compose_config("stage=sft", output_dir=tmp_path))
    model = load_policy(tmp_path / "checkpoints" / "sft")
    assert model is not None and no_network == []
    train(compose_config(f"model.pretrained={tmp_path / 'checkpoints' / 'sft'}", "stage=sft",
                         output_dir=tmp_path / "second"))
    assert no_network == []
