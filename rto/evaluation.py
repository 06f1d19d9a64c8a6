"""Evaluation of every policy on held-out prompts: same prompts, same sampling settings and the
same random stream for each, so differences come from the policies alone.

Per policy: mean gold reward ± standard error, reward-model score, KL to pi_ref per response
(sum over tokens of log pi - log pi_ref on the policy's own samples, an unbiased estimate of
KL(pi || pi_ref)), and the gold win rate against the SFT policy's sample for the same prompt.
Real data has no gold reward: there a held-out reward model (`eval.judge`) scores the samples and
judges the win rate instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from rto.algos.masked import masked_sum
from rto.data.collate import Encoder, encode_prompts
from rto.models.forward import policy_logprobs
from rto.rl.rollout import sample_responses


def stderr(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


@dataclass
class Samples:
    prompts: list[str]
    responses: list[str]
    kl: np.ndarray
    rm_score: np.ndarray
    length: np.ndarray
    gold: Optional[np.ndarray]
    judge: Optional[np.ndarray] = None


@torch.no_grad()
def sample_policy(policy, reference, reward_model, prompts: list[str], encoder: Encoder, *, batch_size: int,
                  max_new_tokens: int, temperature: float, seed: int, decode: Callable,
                  gold: Optional[Callable], judge=None) -> Samples:
    generator = torch.Generator().manual_seed(seed)
    responses, kls, scores, lengths, judged = [], [], [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        batch = encode_prompts(encoder, chunk)
        ids, mask = sample_responses(policy, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens,
                                     encoder.tokenizer.eos_token_id, encoder.pad_id, temperature, generator)
        batch.update(response_ids=ids, response_mask=mask)
        logp, _ = policy_logprobs(policy, batch)
        ref_logp, _ = policy_logprobs(reference, batch)
        kls.append(masked_sum(logp - ref_logp, mask, dim=1).numpy())
        scores.append(reward_model.score(**batch, prompt_text=chunk).cpu().numpy())
        if judge is not None:
            judged.append(judge.score(**batch, prompt_text=chunk).cpu().numpy())
        lengths.append(mask.sum(1).numpy())
        responses.extend(decode(ids, mask))
    gold_scores = None if gold is None else np.asarray(gold(prompts, responses), dtype=float)
    return Samples(list(prompts), responses, np.concatenate(kls), np.concatenate(scores),
                   np.concatenate(lengths), gold_scores, np.concatenate(judged) if judged else None)


def distinct_ratio(response: str, special: frozenset = frozenset()) -> float:
    """Distinct words over words (special tokens left out); 1.0 for an empty response. A policy that
    hacks its reward by repeating what pays shows it here first."""
    words = [w for w in response.split() if w not in special]
    return len(set(words)) / len(words) if words else 1.0


def summarize(samples: Samples, baseline: Samples, optimum: Optional[np.ndarray] = None,
              special: frozenset = frozenset()) -> dict[str, float]:
    distinct = np.asarray([distinct_ratio(r, special) for r in samples.responses])
    out = {
        "kl": float(samples.kl.mean()), "kl_stderr": stderr(samples.kl),
        "rm_score": float(samples.rm_score.mean()), "rm_score_stderr": stderr(samples.rm_score),
        "response_length": float(samples.length.mean()),
        "distinct_ratio": float(distinct.mean()),
    }
    if samples.gold is not None:
        wins = (samples.gold > baseline.gold) + 0.5 * (samples.gold == baseline.gold)
        out.update(gold_reward=float(samples.gold.mean()), gold_reward_stderr=stderr(samples.gold),
                   win_rate=float(wins.mean()), win_rate_stderr=stderr(wins))
        if optimum is not None:  # per prompt, the share of the best reachable gold
            fraction = samples.gold / optimum
            out.update(gold_fraction=float(fraction.mean()), gold_fraction_stderr=stderr(fraction))
    if samples.judge is not None:
        wins = (samples.judge > baseline.judge) + 0.5 * (samples.judge == baseline.judge)
        out.update(judge_score=float(samples.judge.mean()), judge_win_rate=float(wins.mean()),
                   judge_win_rate_stderr=stderr(wins))
    return out


def evaluate(policies: dict, reference, reward_model, prompts: list[str], encoder: Encoder, eval_cfg,
             decode: Callable, gold: Optional[Callable], judge=None,
             optimum: Optional[Callable] = None) -> tuple[dict[str, dict[str, float]], dict[str, Samples]]:
    """`policies` maps a row name to a model; the one named "sft" is the win-rate baseline."""
    samples = {
        name: sample_policy(model, reference, reward_model, prompts, encoder, batch_size=eval_cfg.batch_size,
                            max_new_tokens=eval_cfg.max_new_tokens, temperature=eval_cfg.temperature,
                            seed=eval_cfg.seed, decode=decode, gold=gold, judge=judge)
        for name, model in policies.items()
    }
    baseline = samples["sft"]
    best = optimum(prompts) if optimum is not None else None
    special = frozenset(encoder.tokenizer.all_special_tokens)
    return {name: summarize(s, baseline, best, special) for name, s in samples.items()}, samples


def format_table(results: dict[str, dict[str, float]], labels: dict[str, str]) -> str:
    """A Markdown table: one row per policy (gold columns on the embedded task, judge columns when
    a held-out reward model judged)."""
    has_gold = all("gold_reward" in r for r in results.values())
    has_judge = all("judge_win_rate" in r for r in results.values())
    header = "| policy | gold reward | KL to ref | win rate vs SFT | RM score |" if has_gold \
        else "| policy | RM score | KL to ref |"
    if has_judge:
        header += " judge win rate vs SFT | judge score |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in results.items():
        if has_gold:
            line = (f"| {labels.get(name, name)} | {r['gold_reward']:.3f} ± {r['gold_reward_stderr']:.3f} "
                    f"| {r['kl']:.3f} ± {r['kl_stderr']:.3f} | {r['win_rate']:.3f} ± {r['win_rate_stderr']:.3f} "
                    f"| {r['rm_score']:.3f} |")
        else:
            line = (f"| {labels.get(name, name)} | {r['rm_score']:.3f} ± {r['rm_score_stderr']:.3f} "
                    f"| {r['kl']:.3f} ± {r['kl_stderr']:.3f} |")
        if has_judge:
            line += f" {r['judge_win_rate']:.3f} ± {r['judge_win_rate_stderr']:.3f} | {r['judge_score']:.3f} |"
        lines.append(line)
    return "\n".join(lines)
