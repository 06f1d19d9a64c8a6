"""The verdict's plots, one colour per method in every plot."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from rto.report.stats import mean_se, smooth

COLORS = {"SFT": "#7f7f7f", "DPO": "#2ca02c", "PPO (sentence)": "#1f77b4", "RTO (token)": "#d62728",
          "DDPO": "#9467bd", "Semi-RTO": "#ff7f0e", "Semi-RTO (window)": "#ff7f0e", "RS-PPO": "#8c564b"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _mean_by_beta(points: list[dict], key: str) -> tuple[list, list, list, list]:
    by_beta: dict[float, list[dict]] = defaultdict(list)
    for p in points:
        by_beta[p["beta"]].append(p)
    betas = sorted(by_beta)
    kl = [mean_se([p["kl"] for p in by_beta[b]]) for b in betas]
    y = [mean_se([p[key] for p in by_beta[b]]) for b in betas]
    return [k[0] for k in kl], [np.nan_to_num(k[1]) for k in kl], [v[0] for v in y], [np.nan_to_num(v[1]) for v in y]


def plot_final(final: dict, path: Path) -> None:
    plt = _plt()
    rows = {label: row["gold_reward"] for label, row in final["rows"].items() if "gold_reward" in row}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    labels = list(rows)
    ax.bar(labels, [rows[x]["mean"] for x in labels], yerr=[np.nan_to_num(rows[x]["se"]) for x in labels],
           color=[COLORS.get(x, "black") for x in labels], capsize=4)
    ax.set(ylabel="gold reward (test prompts)", title="Final gold reward, mean ± s.e. over seeds")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontier(frontier: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, points in frontier["points"].items():
        if not points:
            continue
        kl, kl_se, gold, gold_se = _mean_by_beta(points, "gold")
        ax.errorbar(kl, gold, xerr=kl_se, yerr=gold_se, marker="o", capsize=3, color=COLORS.get(label), label=label)
        at = [(x, s["mean"]) for x, s in zip(frontier["grid"], frontier["at_kl"][label]) if s]
        if at:
            ax.plot(*zip(*at), ls="none", marker="x", color=COLORS.get(label))
    for x in frontier["grid"]:
        ax.axvline(x, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="KL to the reference (per response)", ylabel="gold reward (test prompts)",
           title="Gold against KL (x: read at common KL values)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_overoptimization(frontier: dict, path: Path) -> None:
    """Reward-model score and gold against KL per arm: a reward model being gamed shows as RM score
    rising while gold stalls or falls."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for label, points in frontier["points"].items():
        if not points:
            continue
        for ax, key, name in ((axes[0], "rm_score", "reward-model score"), (axes[1], "gold", "gold reward")):
            kl, _, y, y_se = _mean_by_beta(points, key)
            ax.errorbar(kl, y, yerr=y_se, marker="o", capsize=3, color=COLORS.get(label), label=label)
            ax.set(xlabel="KL to the reference", ylabel=name)
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Over-optimisation: what the reward model sees and what is true, against KL")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_efficiency(curves: dict[str, list[list[dict]]], window: int, path: Path) -> None:
    """Validation gold against sampled responses, each seed's curve smoothed, then mean ± s.e."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, seeds in curves.items():
        if not seeds:
            continue
        xs = sorted({p["val/sampled_responses"] for c in seeds for p in c})
        smoothed = [dict(zip([p["val/sampled_responses"] for p in c], smooth([p["val/gold_reward"] for p in c], window)))
                    for c in seeds]
        stats = [mean_se([s[x] for s in smoothed if x in s]) for x in xs]
        mean, se = np.array([m for m, _ in stats]), np.nan_to_num(np.array([e for _, e in stats]))
        ax.plot(xs, mean, color=COLORS.get(label), label=f"{label} (n={len(seeds)})")
        ax.fill_between(xs, mean - se, mean + se, color=COLORS.get(label), alpha=0.2)
    ax.set(xlabel="sampled responses", ylabel="gold reward (validation subset)",
           title=f"Sample efficiency (trailing mean over {window} points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_density(density: dict, path: Path) -> None:
    plt = _plt()
    labels = density["ordering"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(labels, [density["variants"][x]["mean"] for x in labels],
           yerr=[np.nan_to_num(density["variants"][x]["se"]) for x in labels],
           color=[COLORS.get(x, "black") for x in labels], capsize=4)
    ax.set(ylabel="gold reward (test prompts)", title="Where the DPO reward arrives (one budget)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
