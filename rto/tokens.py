"""The token page of a finished run: every response token coloured by its reward.

    python -m rto.tokens <run folder> [--n-prompts 8]     # -> <run folder>/tokens.html (+ tokens.json)

Samples responses to held-out prompts from each policy of the run (SFT = pi_ref, DPO, the PPO/RTO
policy) and writes one self-contained HTML page (no network; open it from disk) with a switch
between the per-token signals of `rto.token_signals` (DPO token reward, its raw log-ratio, the KL
term, the run's total reward, the critic's value, the advantage and, on the embedded task, the gold
per-word reward), numbers on hover, a legend, and the sequence scores (gold, RM, KL) beside each
response. `tokens.json` holds the same numbers. When the run logged to W&B, the page is logged to
that W&B run too (`tokens/page`, an HTML panel; offline runs get an offline record to sync).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from rto.artifacts import atomic_write_text
from rto.credit import spearman
from rto.report import POLICY_LABELS
from rto.run_folder import RunFolder
from rto.token_page import render
from rto.token_signals import SIGNALS, ResponseView, RunModels, policy_views, signal_scales

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
    for n, (name, policy) in enumerate(policies.items()):  # each policy draws from its own random stream
        views[name], dpo_label = policy_views(run, models, name, policy, prompts, seed=cfg.eval.seed + n)
    every = [v for vs in views.values() for v in vs]
    scales = signal_scales(every)
    helps = signal_help(cfg, dpo_label)
    signals = [{"key": k, "short": helps[k][0], "help": helps[k][1], "scale": scales[k]} for k in SIGNALS if k in scales]
    summary = {name: policy_summary(vs, run.tokenizer.eos_token_id) for name, vs in views.items()}
    columns = [c for c in SUMMARY_COLUMNS if any(c[0] in s and not np.isnan(s[c[0]]) for s in summary.values())]
    meta = [("run", run.folder.resolve().name), ("reward", cfg.reward.name), ("beta", cfg.beta),
            ("reward.dpo_scale", cfg.reward.dpo_scale), ("dpo.beta", cfg.dpo.beta), ("model", cfg.model.name),
            ("data", cfg.data.name), ("ppo.iterations", cfg.ppo.iterations), ("seed", cfg.seed),
            ("held-out prompts", len(prompts))]
    return {
        "title": f"Token rewards: {labels['policy']} run", "meta": meta, "signals": signals,
        "default_signal": "dpo", "labels": labels,
        "policies": [{"key": k, "label": labels[k]} for k in policies], "summary": summary,
        "summary_columns": columns,
        "prompts": [{"prompt": prompt, "responses": [asdict(views[name][i]) for name in policies]}
                    for i, prompt in enumerate(prompts)],
    }


def wandb_run_id(folder: Path) -> Optional[str]:
    """The id of the run's latest W&B run (folders `<offline-run|run>-<time>-<id>`), None if it has none."""
    runs = sorted(p for p in (folder / "wandb").glob("*run-*-*") if p.is_dir() and not p.is_symlink())
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def log_to_wandb(run: RunFolder, html_text: str) -> Optional[str]:
    """Log the page to the run's W&B run (resumed by id); returns the id, None without a W&B logger."""
    node = (run.cfg.get("logger") or {}).get("wandb")
    if node is None:
        return None
    import wandb

    run_id = wandb_run_id(Path(node.save_dir))
    with wandb.init(project=node.project, entity=node.entity, group=node.group, name=node.name, id=run_id,
                    resume="allow", dir=str(node.save_dir), mode="offline" if node.offline else "online") as wb:
        wb.log({"tokens/page": wandb.Html(html_text, inject=False)})  # inject=False: no stylesheet link
        return wb.id


def write_page(folder: Path, n_prompts: int = 8, out: Optional[Path] = None, use_wandb: bool = True) -> Path:
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


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rto.tokens", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a finished run folder (outputs/rto/runs/<time>)")
    parser.add_argument("--n-prompts", type=int, default=8, help="held-out prompts on the page (default 8)")
    parser.add_argument("--out", type=Path, help=f"where to write the page (default <folder>/{PAGE})")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the page to the run's W&B run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.n_prompts < 1:
        sys.exit("error: --n-prompts must be >= 1")
    try:
        out = write_page(args.folder, args.n_prompts, args.out, use_wandb=not args.no_wandb)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    print(out)


if __name__ == "__main__":
    main()
