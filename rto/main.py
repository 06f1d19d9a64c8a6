"""Entry point: `python -m rto.main reward=token beta=0.1` (add `-m` and comma lists to sweep).

A user error (`rto.errors.UserError`: a bad config value, data file or row, a missing checkpoint or
model, a machine without the GPU asked for) ends the run with one short message and exit code 1, no
traceback; anything else is a bug and keeps its traceback. `HYDRA_FULL_ERROR=1` shows the full
traceback of either. In a sweep (`-m`) a job with a user error stops at once, its message logged in
its own `main.log`; the other jobs run, and the sweep then exits 1 with the failed job's overrides
and message.
"""

from __future__ import annotations

import logging
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rto.config import validate
from rto.errors import UserError
from rto.pipeline import run
from rto.preflight import preflight

log = logging.getLogger("rto.main")  # not `__main__` under `python -m rto.main`


class ReportedUserError(CompactHydraException):
    """A user error as Hydra reports it: Hydra prints a CompactHydraException's message alone (no
    traceback) and exits 1, in a single run and, once the sweep's jobs are done, in a multirun;
    with HYDRA_FULL_ERROR=1 it raises it instead, the user error's own traceback chained."""


def describe(err: UserError) -> str:
    return f"Error ({err.kind}): {err}"


def train(cfg: DictConfig) -> Optional[float]:
    """Check the config, run the stages it asks for, return the metric a sweeper optimises."""
    validate(cfg)
    preflight(cfg)
    if cfg.print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True))
    metrics = run(cfg)
    return metrics.get(cfg.optimized_metric)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    try:
        return train(cfg)
    except UserError as err:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error(describe(err))  # now, in this job's log; Hydra reports the sweep's first failure at its end
        raise ReportedUserError(describe(err)) from err


if __name__ == "__main__":
    main()
