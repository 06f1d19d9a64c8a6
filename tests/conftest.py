"""Tests compose the real config with `hydra.compose` and run the real entry point at tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def compose_config(*overrides: str, output_dir: Path, debug: str | None = "tiny") -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*([f"debug={debug}"] if debug else []), *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(Path(output_dir) / "cache")  # tests train their stages, not a stale cache's
    return cfg


def run_entry_point(out: Path, *overrides: str, env: dict[str, str] | None = None) -> Path:
    """`python -m rto.main <overrides>` in a subprocess (as a user types it; the way to get several
    ranks), into run folder `out` with its own cache; fails the test with the tail of its stderr."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "rto.main", *overrides, f"hydra.run.dir={out}",
                             f"paths.cache_dir={out}/cache"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_config(*overrides, output_dir=output_dir or tmp_path)
    return make


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """SFT, RM and DPO of one tiny run (Llama from config), read by a test module's RL runs."""
    from rto.main import train

    out = tmp_path_factory.mktemp("upstream")
    for stage in ("sft", "rm", "dpo"):
        train(compose_config(f"stage={stage}", output_dir=out))
    return out / "checkpoints"
