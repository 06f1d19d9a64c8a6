"""The PPO-vs-RTO dashboard as a W&B report, in one command (needs `wandb login` and online runs).

    python -m rto.wandb_report --entity ME --project rto --experiment ppo_vs_rto   # creates it, prints its URL
    python -m rto.wandb_report --entity ME --experiment ppo_vs_rto --dry-run       # prints the spec, no server

The report shows the runs of one experiment (the W&B group `experiment_name`), grouped by reward type
(and beta), with the standard panels: per-iteration gold reward, RM score, KL, entropy, value loss,
clip fraction, response length and the actor's gradient norm against PPO iterations (mean ± s.e. over seeds), the final
gold-reward-vs-KL frontier, and the final metrics of every run.
"""

from __future__ import annotations

import argparse
import json
from typing import Optional

# (title, logged key) of the per-iteration panels, x = PPO iteration
CURVES = (
    ("Gold reward of the rollout", "ppo/gold_reward"),
    ("Reward-model score", "ppo/score"),
    ("KL to the reference (k1, per response)", "ppo/kl_k1"),
    ("Policy entropy", "ppo/entropy"),
    ("Value loss", "ppo/value_loss"),
    ("Clip fraction", "ppo/clipfrac"),
    ("Response length", "ppo/response_length"),
    ("Actor gradient norm, before clipping", "ppo/actor_grad_norm"),
)
FINAL = ("eval/policy/gold_reward", "eval/policy/kl", "eval/policy/win_rate", "eval/dpo/gold_reward",
         "eval/sft/gold_reward")


def build_report(entity: str, project: str, experiment: str, group_by: tuple[str, ...] = ("algo.name", "reward.name")):
    """The report object (nothing is sent until `.save()`)."""
    import wandb_workspaces.reports.v2 as wr

    runset = wr.Runset(entity=entity, project=project, name=experiment,
                       filters=f"Config('experiment_name') == '{experiment}'",
                       groupby=[f"config.{key}" for key in group_by])
    curves = [wr.LinePlot(title=title, x="ppo/iteration", y=[key], groupby_aggfunc="mean",
                          groupby_rangefunc="stderr", smoothing_factor=0.0)
              for title, key in CURVES]
    frontier = wr.ScatterPlot(title="Gold reward against KL (one point per run)",
                              x=wr.SummaryMetric("eval/policy/kl"), y=wr.SummaryMetric("eval/policy/gold_reward"))
    finals = [wr.BarPlot(title=key, metrics=[key], groupby_aggfunc="mean", groupby_rangefunc="stderr")
              for key in FINAL[:3]]
    return wr.Report(
        entity=entity, project=project, title=f"PPO vs RTO: {experiment}",
        description="Sentence-level (PPO) against token-level (RTO) rewards; mean ± standard error over seeds.",
        blocks=[
            wr.H1("Learning curves"),
            wr.P("Rollout metrics per PPO iteration, grouped by " + ", ".join(group_by) + "."),
            wr.PanelGrid(runsets=[runset], panels=curves),
            wr.H1("Final evaluation on held-out prompts"),
            wr.PanelGrid(runsets=[runset], panels=[frontier, *finals]),
        ])


def report_spec(report) -> dict:
    """What `.save()` would upload, minus the runsets' project ids (those need the server): the panels'
    view specs as W&B stores them, and each runset's filter and grouping. Built offline."""
    grids = [block for block in report.blocks if hasattr(block, "panels")]
    return {"title": report.title, "entity": report.entity, "project": report.project,
            "runsets": [{"filters": rs.filters, "groupby": rs.groupby} for grid in grids for rs in grid.runsets],
            "panels": [panel._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
                       for grid in grids for panel in grid.panels]}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rto.wandb_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entity", required=True, help="W&B user or team")
    parser.add_argument("--project", default="rto")
    parser.add_argument("--experiment", default="ppo_vs_rto", help="experiment_name of the runs (their W&B group)")
    parser.add_argument("--group-by", nargs="+", default=["algo.name", "reward.name"],
                        help="config keys, e.g. algo.name reward.name beta")
    parser.add_argument("--dry-run", action="store_true", help="print the report spec instead of saving it")
    args = parser.parse_args(argv)
    report = build_report(args.entity, args.project, args.experiment, tuple(args.group_by))
    if args.dry_run:
        print(json.dumps(report_spec(report), indent=1, default=str))
        return
    report.save()
    print(report.url)


if __name__ == "__main__":
    main()
