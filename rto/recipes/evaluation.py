"""Evaluation on held-out prompts (`eval.prompt_set`: test, or val for tuning) of every policy the job produced (SFT, DPO, the RL policy): the
table, the metrics and sample generations, written by the output writer; where the job has a DPO
model and the task a per-word gold reward, the credit-assignment metric (`rto.credit`). Runs on rank 0."""

from __future__ import annotations

import time

from rto.credit import credit_on_texts
from rto.evaluation import evaluate, format_table
from rto.models.placement import off_step_device
from rto.models.reward import judge_scorer
from rto.outputs import OutputWriter
from rto.peak_memory import GIB, process_peak_rss_bytes, stage_peak
from rto.recipes.base import StageRecipe
from rto.recipes.rl import LEARNERS, learner_name

POLICY_LABELS = {"sentence": "PPO (sentence)", "token": "RTO (token)"}
DPO_LABELS = {"sigmoid": "DPO", "ipo": "IPO", "simpo": "SimPO"}
# the stage whose model each evaluated policy is
POLICY_STAGES = {"sft": "sft", "dpo": "dpo", "policy": "ppo"}


def policy_label(cfg) -> str:
    """The RL policy's row: `PPO (sentence)` and `RTO (token)` for the paper's learner, else `<learner> (<reward>)`."""
    reward, algo = cfg.reward.name, learner_name(cfg)
    if algo == "ppo":
        return POLICY_LABELS.get(reward, f"PPO ({reward})")
    return f"{LEARNERS[algo].label} ({reward})"


class EvaluationRecipe(StageRecipe):
    name = "eval"
    checkpointed = False

    def needs(self, cfg):
        # the reference (SFT) and the reward model score every policy; `eval.policies` without `policy`
        # evaluates SFT and DPO without any RL (tuning the DPO arm)
        return ("sft", "rm") + tuple(POLICY_STAGES[name] for name in cfg.eval.policies if name != "sft")

    def run(self, ctx, upstream):
        cfg = ctx.cfg.eval
        prompts = ctx.data.prompts(cfg.prompt_set)[:cfg.n_prompts]
        policies = {name: upstream[POLICY_STAGES[name]] for name in cfg.policies}
        start = time.perf_counter()
        judge = judge_scorer(cfg.get("judge"), ctx.data.encoder, ctx.data.tokenizer)
        scorer, credit = ctx.scorer(upstream["rm"]), None
        # the DPO model as a token-reward model: only where the task has per-word gold rewards to compare with
        dpo = upstream.get("dpo") if ctx.data.gold_tokens is not None else None
        # on the run's device and in its precision (`trainer.precision`), as its policies were trained
        with stage_peak(ctx.metrics, "eval", off_step_device(ctx.cfg.trainer)), \
                ctx.off_step(*policies.values(), upstream["sft"], scorer, judge, dpo):
            results, samples = evaluate(policies, upstream["sft"], scorer, prompts, ctx.data.encoder, cfg, ctx.decode,
                                        ctx.data.gold, judge, optimum=ctx.data.optimum)
            ctx.metrics["time/eval_seconds"] = time.perf_counter() - start
            if dpo is not None:
                # DPO's token rewards against the gold per-word rewards, on the SFT policy's responses
                credit = credit_on_texts(dpo, upstream["sft"], samples["sft"].prompts, samples["sft"].responses,
                                         ctx.data.encoder, ctx.data.gold_tokens, cfg.batch_size,
                                         ctx.cfg.ppo.temperature)
        table = format_table(results, {"sft": "SFT", "dpo": DPO_LABELS[ctx.cfg.dpo.loss], "policy": policy_label(ctx.cfg)})
        for name, result in results.items():
            ctx.metrics.update({f"eval/{name}/{k}": v for k, v in result.items()})
        if credit is not None:
            ctx.metrics.update({f"eval/credit/{k}": v for k, v in credit.items()})
        n = cfg.n_samples_saved
        rows = [{"policy": name, "prompt": ctx.prompt_text(p), "response": r,
                 "gold": None if s.gold is None else float(s.gold[i]), "rm_score": float(s.rm_score[i]),
                 "judge": None if s.judge is None else float(s.judge[i])}
                for name, s in samples.items() for i, (p, r) in enumerate(zip(s.prompts[:n], s.responses[:n]))]
        ctx.metrics["memory/process_peak_rss_gib"] = process_peak_rss_bytes() / GIB
        OutputWriter(ctx.out, ctx.loggers).write(table, ctx.metrics, rows)
        print(f"\n{table}\n")
