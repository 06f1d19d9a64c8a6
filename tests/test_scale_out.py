"""Trainer presets (Lightning strategies) and sweep launchers (Hydra plugins) compose and instantiate."""

from __future__ import annotations

import importlib.util

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rto.config import ConfigError, validate
from tests.conftest import CONF_DIR


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("preset, strategy", [
    ("cpu", "SingleDeviceStrategy"), ("ddp_cpu", "DDPStrategy"),
])
def test_cpu_presets_instantiate_their_lightning_strategy(make_cfg, preset, strategy):
    cfg = make_cfg(f"trainer={preset}")
    validate(cfg)
    trainer = instantiate(cfg.trainer, logger=False)
    assert type(trainer.strategy).__name__ == strategy
    if preset == "ddp_cpu":
        assert trainer.world_size == 2 and cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize("preset, strategy, precision", [
    ("gpu", None, "bf16-mixed"), ("ddp", "ddp", "bf16-mixed"),
    ("fsdp", "lightning.pytorch.strategies.FSDPStrategy", "bf16-mixed"),
    ("deepspeed_stage_2", "deepspeed_stage_2_offload", "bf16-mixed"),
])
def test_gpu_presets_compose_to_a_lightning_strategy(make_cfg, preset, strategy, precision):
    cfg = make_cfg(f"trainer={preset}", "stage=dpo")
    validate(cfg)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == precision
    got = cfg.trainer.get("strategy")
    assert (got if not hasattr(got, "_target_") else got._target_) == strategy


def test_fsdp_strategy_instantiates_with_a_block_wrap_policy(make_cfg):
    strategy = instantiate(make_cfg("trainer=fsdp").trainer.strategy)
    assert type(strategy).__name__ == "FSDPStrategy"


@pytest.mark.skipif(not has("deepspeed"), reason="deepspeed is not installed (pip install -e '.[deepspeed]')")
def test_deepspeed_preset_instantiates(make_cfg):
    from lightning.pytorch.strategies import StrategyRegistry
    assert "deepspeed_stage_2_offload" in StrategyRegistry


def test_deepspeed_rejects_ppo_before_training(make_cfg):
    with pytest.raises(ConfigError, match="trainer.strategy=deepspeed_stage_2_offload takes one optimizer"):
        validate(make_cfg("trainer=deepspeed_stage_2"))


LAUNCHERS = [
    ("local", "hydra._internal.core_plugins.basic_launcher", "BasicLauncher"),
    ("joblib", "hydra_plugins.hydra_joblib_launcher", "JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher", "SlurmLauncher"),
    ("ray", "hydra_plugins.hydra_ray_launcher", "RayLauncher"),
]


@pytest.mark.parametrize("launcher, plugin, target", LAUNCHERS)
def test_launcher_overlays_compose_with_their_plugin(launcher, plugin, target):
    if not has(plugin):
        pytest.skip(f"{plugin} is not installed")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["debug=tiny", f"launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.timeout_min > 0
    if launcher == "joblib":
        assert cfg.hydra.launcher.n_jobs == 2 and cfg.threads == 1


@pytest.mark.slow
def test_sweep_with_the_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    """A real two-job sweep through the entry point, with the launcher overlay."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "rto.main", "-m", "launcher=joblib", "debug=tiny", "stage=sft", "seed=0,1",
         f"hydra.sweep.dir={tmp_path}"], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "sft" / "model.safetensors").exists()
