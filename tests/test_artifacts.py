"""Stage folders and resume checkpoints carry manifests; a corrupted or truncated file is an error
naming the file, never a silent load. Weights never come from an unrestricted pickle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rto.artifacts import CorruptArtifactError, atomic_write_text, verify_manifest, write_manifest
from rto.main import train
from rto.resume import VerifiedCheckpointIO, latest_checkpoint, sidecar
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sft_run(tmp_path):
    train(compose_config("stage=sft", output_dir=tmp_path))
    return tmp_path


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_stage_folder_has_a_manifest_of_every_file(sft_run):
    folder = sft_run / "checkpoints" / "sft"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "sft" and re.fullmatch(r"[0-9a-f]{64}", manifest["config_hash"])
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert not list((sft_run / "checkpoints").glob(".*tmp*"))  # no temporary left behind
    assert not (sft_run / "checkpoints" / "sft-resume").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_manifest"])
def test_damaged_stage_checkpoint_is_an_error_naming_the_file(sft_run, damage):
    folder = sft_run / "checkpoints" / "sft"
    weights = folder / "model.safetensors"
    if damage == "flip":
        flip_byte(weights)
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif damage == "delete":
        weights.unlink()
    else:
        (folder / "manifest.json").unlink()
    expected = "manifest.json" if damage == "no_manifest" else "model.safetensors"
    with pytest.raises(CorruptArtifactError, match=rf"{expected}.*delete .*sft to rebuild it"):
        train(compose_config("stage=rm", output_dir=sft_run))
    assert not (sft_run / "checkpoints" / "rm").exists()


def test_manifest_of_another_kind_is_rejected(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    write_manifest(tmp_path, "rm", "h")
    with pytest.raises(CorruptArtifactError, match="holds a 'rm' artifact, expected 'dpo'"):
        verify_manifest(tmp_path, "dpo")


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def resume_checkpoint(folder: Path, cfg_hash: str = "abc") -> Path:
    io = VerifiedCheckpointIO(cfg_hash)
    path = folder / "epoch=0-step=3.ckpt"
    io.save_checkpoint({"epoch": 0, "global_step": 3, "state_dict": {"w": torch.ones(64)}}, path)
    return path


def test_resume_checkpoint_roundtrip_and_corruption(tmp_path):
    path = resume_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path, "abc") == path
    assert torch.equal(VerifiedCheckpointIO("abc").load_checkpoint(path)["state_dict"]["w"], torch.ones(64))
    with pytest.raises(CorruptArtifactError, match="different config"):
        latest_checkpoint(tmp_path, "other")
    flip_byte(path)
    with pytest.raises(CorruptArtifactError, match=r"step=3.ckpt is corrupted or truncated.*delete"):
        latest_checkpoint(tmp_path, "abc")


def test_resume_checkpoint_without_sidecar_is_an_interrupted_write_and_ignored(tmp_path):
    path = resume_checkpoint(tmp_path)
    sidecar(path).unlink()
    assert latest_checkpoint(tmp_path, "abc") is None


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_resume_checkpoint_is_loaded_without_arbitrary_pickle(tmp_path):
    """Even a checkpoint whose hash matches (i.e. written by someone else) cannot run code."""
    io = VerifiedCheckpointIO("abc")
    path = tmp_path / "evil.ckpt"
    io.save_checkpoint({"epoch": 0, "global_step": 1, "x": Payload()}, path)
    with pytest.raises(CorruptArtifactError, match="cannot load resume checkpoint"):
        io.load_checkpoint(path)


def test_no_unsafe_deserialisation_in_the_package():
    sources = {p: p.read_text() for p in (ROOT / "rto").rglob("*.py")}
    for path, text in sources.items():
        assert not re.search(r"^\s*import pickle|^\s*from pickle", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"



def test_no_model_preset_trusts_remote_code(tmp_path):
    presets = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
    assert len(presets) >= 3
    for preset in presets:
        assert compose_config(f"model={preset}", output_dir=tmp_path).model.trust_remote_code is False, preset


def test_a_stage_trained_on_a_stage_reused_under_another_config_is_not_cached(tmp_path):
    """A run folder's SFT written under another config is reused with a warning; the reward model this
    job then trains on it is not what the config's cache key describes, so it is not published there
    (else every later job with this config would get it from the cache, without a warning)."""
    same, changed = tmp_path / "same", tmp_path / "changed"
    for out, overrides in ((same, ()), (changed, ("sft.optimizer.lr=0.01",))):
        train(compose_config("stage=sft", output_dir=out))
        train(compose_config("stage=rm", *overrides, output_dir=out))
    assert list((same / "cache" / "rm").glob("*/manifest.json"))  # the control: published
    assert not list((changed / "cache" / "rm").glob("*/manifest.json"))
    assert (changed / "checkpoints" / "rm" / "manifest.json").is_file()  # trained and kept in the run folder


def test_a_resume_checkpoint_is_tied_to_the_trainer_settings(tmp_path):
    """A stage killed in fp32 is not resumed under bf16-mixed (nor another device count or strategy):
    the stage cache would file the mixed result under the new settings' key. The trainer's display
    settings do not count."""
    from rto.context import RunContext

    def resume_hash(*overrides: str) -> str:
        return RunContext(compose_config(*overrides, output_dir=tmp_path)).resume_hash(("seed", "sft"))

    base = resume_hash()
    assert resume_hash("trainer.precision=bf16-mixed") != base
    assert resume_hash("trainer=ddp_cpu") != base
    assert resume_hash("trainer.enable_progress_bar=true") == base
