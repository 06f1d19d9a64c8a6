"""The token page's data (`page_data`: the per-token signals of every policy, the summaries, the
help texts with this run's coefficients) and writing it (`write_page`)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from rto.artifacts import atomic_write_text
from rto.credit import spearman
from rto.report.multirun import POLICY_LABELS
from rto.run_folder import RunFolder
from rto.tokens.html import render
from rto.tokens.signals import SIGNALS, ResponseView, RunModels, policy_views, signal_scales
from rto.tokens.wandb_panel import log_to_wandb

log = logging.getLogger(__name__)

PAGE, DATA = "tokens.html", "tokens.json"
SUMMARY_COLUMNS = [("gold", "gold reward"), ("gold_dense", "gold dense"), ("gold_sequence", "gold sequence"),
                   ("rm", "RM score"), ("kl", "KL to π_ref"), ("reward", "Σ reward"),
                   ("credit_spearman", "credit ρ (DPO vs gold)")]


def signal_help(cfg, dpo_label: str) -> dict[str, tuple[str, str]]:
    """Short name and one-line description of each signal, with this run's coefficients."""
    reward, ppo = cfg.reward, cfg.ppo
    whitened = ", whitened over the policy's responses" if ppo.whiten_advantages else ""
    return {
        "dpo": ("DPO reward", dpo_label + ", on this token"),
        "log_ratio": ("log π_dpo/π_ref", "the raw log-ratio of the DPO model to π_ref (the SFT policy) on this token"),
        "kl": ("KL term", f"−β·k, β={cfg.beta:g}, k the {ppo.kl_estimator} estimate of log π/π_ref for the policy "
                          f"that wrote the response"),
        "reward": ("reward", f"the per-token reward reward={reward.name} hands out (DPO part, KL term, and the RM "
                             f"score ×{reward.rm_scale:g} at the last token), as PPO would for this response"),
        "value": ("value", "the final critic's V(s), the value of the state before this token"),
        "advantage": ("advantage", f"GAE advantage (γ={ppo.gamma:g}, λ={ppo.lam:g}) from the rewards and the "
                                   f"critic's values{whitened}"),
        "gold": ("gold (dense)", "the gold reward's per-word term; the sequence part (length, repeats, missing "
                                 "<eos>) is no token's and is shown beside the response"),
    }


def page_credit(views: list[ResponseView], eos_id: int) -> float:
    """Spearman of DPO log-ratio and gold per word over the views' tokens, `<eos>` left out (`rto.credit`)."""
    pairs = [(r, g) for v in views if "gold" in v.signals
             for i, r, g in zip(v.ids, v.signals["log_ratio"], v.signals["gold"]) if i != eos_id]
    return spearman(*map(np.asarray, zip(*pairs))) if len(pairs) > 1 else float("nan")


def policy_summary(views: list[ResponseView], eos_id: int) -> dict[str, float]:
    """Mean sequence scores of one policy's responses, and its credit correlation on the page."""
    keys = [key for key, _ in SUMMARY_COLUMNS if all(key in v.scores for v in views)]
    return {**{key: float(np.mean([v.scores[key] for v in views])) for key in keys},
            "credit_spearman": page_credit(views, eos_id)}


def page_data(run: RunFolder, n_prompts: int) -> dict:
    """Everything the page shows, as plain data (also written to tokens.json)."""
    cfg = run.cfg
    models = RunModels(run.policy("sft"), run.policy("dpo"), run.reward_model(), *run.critic())
    policies = {"sft": models.reference, "dpo": models.dpo, "policy": run.policy("ppo")}
    labels = {"sft": "SFT", "dpo": "DPO", "policy": POLICY_LABELS.get(cfg.reward.name, f"PPO ({cfg.reward.name})")}
    prompts = run.prompts(n_prompts)
    views: dict[str, list[ResponseView]] = {}
    for name, policy in policies.items():  # each from its own evaluation stream
        views[name], dpo_label = policy_views(run, models, name, policy, prompts)
    every = [v for vs in views.values() for v in vs]
    scales = signal_scales(every)
    helps = signal_help(cfg, dpo_label)
    signals = [{"key": k, "short": helps[k][0], "help": helps[k][1], "scale": scales[k]} for k in SIGNALS if k in scales]
    summary = {name: policy_summary(vs, run.tokenizer.eos_token_id) for name, vs in views.items()}
    columns = [c for c in SUMMARY_COLUMNS if any(c[0] in s and not np.isnan(s[c[0]]) for s in summary.values())]
    meta = [("run", run.folder.resolve().name), ("reward", cfg.reward.name), ("beta", cfg.beta),
            ("reward.dpo_scale", cfg.reward.dpo_scale), ("dpo.beta", cfg.dpo.beta), ("model", cfg.model.name),
            ("data", cfg.data.name), ("ppo.iterations", cfg.ppo.iterations), ("seed", cfg.seed),
            (f"{cfg.eval.prompt_set} prompts", len(prompts))]
    return {
        "title": f"Token rewards: {labels['policy']} run", "meta": meta, "signals": signals,
        "default_signal": "dpo", "labels": labels,
        "policies": [{"key": k, "label": labels[k]} for k in policies], "summary": summary,
        "summary_columns": columns,
        "prompts": [{"prompt": run.prompt_text(prompt), "responses": [asdict(views[name][i]) for name in policies]}
                    for i, prompt in enumerate(prompts)],
    }


def write_page(folder: Path, n_prompts: int = 8, out: Optional[Path] = None, use_wandb: bool = True) -> Path:
    """`<folder>/tokens.html` and `tokens.json` (or `out`), and the W&B panel where the run has W&B."""
    run = RunFolder(folder)
    data = page_data(run, n_prompts)
    out = Path(out) if out else run.folder / PAGE
    html_text = render(data)
    atomic_write_text(out, html_text)
    atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1) + "\n")
    log.info("token page written to %s", out)
    if use_wandb and (run_id := log_to_wandb(run, html_text)):
        log.info("token page logged to W&B run %s (tokens/page)", run_id)
    return out
