"""Entry point: `python -m rto.main reward=token beta=0.1` (add `-m` and comma lists to sweep)."""

from __future__ import annotations

from typing import Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from rto.config import validate
from rto.pipeline import run


def train(cfg: DictConfig) -> Optional[float]:
    """Check the config, run the stages it asks for, return the metric a sweeper optimises."""
    validate(cfg)
    if cfg.print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True))
    metrics = run(cfg)
    return metrics.get(cfg.optimized_metric)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    return train(cfg)


if __name__ == "__main__":
    main()
