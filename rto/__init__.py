"""rto: PPO with sentence-level rewards vs Reinforced Token Optimization (RTO), on Hydra + Lightning."""

import logging
import os
import warnings

# Quiet the libraries' per-call chatter so a run's log shows the experiment, not the plumbing.
os.environ.setdefault("WANDB_SILENT", "true")
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen ref/RM/DPO models
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*litlogger.*")
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)

try:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
except ImportError:  # pragma: no cover
    pass
