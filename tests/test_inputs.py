"""Bad config values fail before training; a path without a model is a clear error; loading a
local model makes no network call."""

from __future__ import annotations

import socket

import pytest

from rto.config import ConfigError, validate
from rto.main import train
from rto.models import load_policy
from tests.conftest import compose_config


@pytest.mark.parametrize("override, key", [("on_nonfinite=ignore", "on_nonfinite"),
                                           ("resume.every_n_steps=0", "resume.every_n_steps"),
                                           ("data.on_invalid=warn", "data.on_invalid")])
def test_reliability_config_values_are_checked(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(override, output_dir=tmp_path))


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_model_path_without_a_model_is_a_clear_error(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no model (at|in) "):
        train(compose_config(f"model.pretrained={path}", "stage=sft", output_dir=tmp_path / "run"))


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
