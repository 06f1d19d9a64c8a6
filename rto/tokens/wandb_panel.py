"""The token page as an HTML panel of the run's own W&B run (resumed by id), when it logged to W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rto.loggers import wandb_run_id


def log_to_wandb(run, html_text: str) -> Optional[str]:
    """Log the page to the W&B run of `run` (a `RunFolder`; resumed by id); returns the id, None without a W&B logger."""
    node = (run.cfg.get("logger") or {}).get("wandb")
    if node is None:
        return None
    import wandb

    run_id = wandb_run_id(Path(node.save_dir))
    with wandb.init(project=node.project, entity=node.entity, group=node.group, name=node.name, id=run_id,
                    resume="allow", dir=str(node.save_dir), mode="offline" if node.offline else "online") as wb:
        wb.log({"tokens/page": wandb.Html(html_text, inject=False)})  # inject=False: no stylesheet link
        return wb.id
