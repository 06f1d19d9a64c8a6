"""Evaluation of every policy on held-out prompts: same prompts and sampling settings for each.

Each policy draws from its own random stream, seeded from `eval.seed` (the run's seed by default) and
the policy's name (so a run is reproducible): with one shared stream a policy close to SFT would copy
SFT's draws token for token and tie, pulling its win rate toward 0.5. The win-rate baseline is a separate draw of the SFT
policy (stream "sft/baseline"), so the SFT row is a null check: about 0.5, with ties at their
natural rate.

Per policy: mean gold reward ± standard error, reward-model score, KL to pi_ref per response
(sum over tokens of log pi_T - log pi_ref_T on the policy's own samples, at the sampling
temperature T: an unbiased estimate of KL(pi_T || pi_ref_T), the distributions sampled), the gold
win rate against the SFT baseline's sample for the same prompt (ties count half) and the share of
ties. Real data has no gold reward: there a held-out reward model (`eval.judge`) scores the samples
and judges the win rate instead. Every model runs in eval mode (dropout off).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from lightning.fabric.utilities import move_data_to_device

from rto.algos.masked import masked_sum
from rto.data.collate import Encoder, encode_prompts
from rto.models.forward import policy_logprobs
from rto.models.precision import device_of
from rto.rl.modes import inference_mode
from rto.rl.experience import in_micro_batches
from rto.rl.rollout import sample_responses

log = logging.getLogger(__name__)
BASELINE = "sft/baseline"  # the stream of the SFT draw every policy's win rate is measured against


def stream_seed(seed: int, name: str) -> int:
    """A policy's own sampling seed, derived from `eval.seed` and its name (stable across runs)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


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
    rm_truncated: int = 0  # responses cut at a re-tokenizing reward model's limit


@torch.no_grad()
def sample_policy(policy, reference, reward_model, prompts: list[str], encoder: Encoder, *, batch_size: int,
                  max_new_tokens: int, temperature: float, seed: int, decode: Callable,
                  gold: Optional[Callable], judge=None, micro_batch_size: Optional[int] = None) -> Samples:
    inference_mode(policy, reference, reward_model, judge)
    device = device_of([policy])  # the GPU on a GPU run (`rto.models.placement`), else the CPU
    generator = torch.Generator(device=device).manual_seed(seed)
    responses, kls, scores, lengths, judged = [], [], [], [], []
    truncated_before = getattr(reward_model, "truncated", 0)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        batch = move_data_to_device(encode_prompts(encoder, chunk), device)
        ids, mask = sample_responses(policy, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens,
                                     encoder.tokenizer.eos_token_id, encoder.pad_id, temperature, generator)
        batch.update(response_ids=ids, response_mask=mask)
        # the [B, R, V] logits of micro-batches of `micro_batch_size` rows at a time (the whole batch if null)
        logp = in_micro_batches(lambda b: policy_logprobs(policy, b, temperature=temperature)[0], batch,
                                micro_batch_size)
        ref_logp = in_micro_batches(lambda b: policy_logprobs(reference, b, temperature=temperature)[0], batch,
                                    micro_batch_size)
        kls.append(masked_sum(logp - ref_logp, mask, dim=1).cpu().numpy())
        scores.append(reward_model.score(**batch, prompt_text=chunk).cpu().numpy())
        if judge is not None:
            judged.append(judge.score(**batch, prompt_text=chunk).cpu().numpy())
        lengths.append(mask.sum(1).cpu().numpy())
        responses.extend(decode(ids.cpu(), mask.cpu()))
    gold_scores = None if gold is None else np.asarray(gold(prompts, responses), dtype=float)
    return Samples(list(prompts), responses, np.concatenate(kls), np.concatenate(scores),
                   np.concatenate(lengths), gold_scores, np.concatenate(judged) if judged else None,
                   rm_truncated=getattr(reward_model, "truncated", 0) - truncated_before)


def wins_and_ties(scores: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: 1 win, 0.5 tie, 0 loss against the baseline's score; and whether it tied."""
    ties = scores == baseline
    return (scores > baseline) + 0.5 * ties, ties.astype(float)


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
    if samples.rm_truncated:
        out["rm_truncated"] = samples.rm_truncated / len(samples.responses)
    if samples.gold is not None:
        wins, ties = wins_and_ties(samples.gold, baseline.gold)
        out.update(gold_reward=float(samples.gold.mean()), gold_reward_stderr=stderr(samples.gold),
                   win_rate=float(wins.mean()), win_rate_stderr=stderr(wins), tie_rate=float(ties.mean()))
        if optimum is not None:  # per prompt, the share of the best reachable gold
            fraction = samples.gold / optimum
            out.update(gold_fraction=float(fraction.mean()), gold_fraction_stderr=stderr(fraction))
    if samples.judge is not None:
        wins, ties = wins_and_ties(samples.judge, baseline.judge)
        out.update(judge_score=float(samples.judge.mean()), judge_win_rate=float(wins.mean()),
                   judge_win_rate_stderr=stderr(wins), judge_tie_rate=float(ties.mean()))
    return out


def evaluate(policies: dict, reference, reward_model, prompts: list[str], encoder: Encoder, eval_cfg,
             decode: Callable, gold: Optional[Callable], judge=None,
             optimum: Optional[Callable] = None) -> tuple[dict[str, dict[str, float]], dict[str, Samples]]:
    """`policies` maps a row name to a model; the one named "sft" also draws the win-rate baseline, from
    its own stream. Returns the rows and each policy's samples (the baseline's are not a row).
    `optimum(prompts)`: the best reachable gold per prompt, where the task knows it."""
    def draw(model, stream: str) -> Samples:
        return sample_policy(model, reference, reward_model, prompts, encoder, batch_size=eval_cfg.batch_size,
                             max_new_tokens=eval_cfg.max_new_tokens, temperature=eval_cfg.temperature,
                             seed=stream_seed(eval_cfg.seed, stream), decode=decode, gold=gold, judge=judge,
                             micro_batch_size=eval_cfg.get("micro_batch_size"))

    samples = {name: draw(model, name) for name, model in policies.items()}
    baseline = draw(policies["sft"], BASELINE)
    for name, s in samples.items():
        if s.rm_truncated:
            log.warning("eval %s: %d of %d re-tokenized responses cut at the reward model's limit", name,
                        s.rm_truncated, len(s.responses))
    best = optimum(prompts) if optimum is not None else None
    special = frozenset(encoder.tokenizer.all_special_tokens)
    return {name: summarize(s, baseline, best, special) for name, s in samples.items()}, samples


def format_table(results: dict[str, dict[str, float]], labels: dict[str, str]) -> str:
    """A Markdown table: one row per policy (gold columns on the embedded task, judge columns when
    a held-out reward model judged)."""
    has_gold = all("gold_reward" in r for r in results.values())
    has_judge = all("judge_win_rate" in r for r in results.values())
    header = "| policy | gold reward | KL to ref | win rate vs SFT | ties | RM score |" if has_gold \
        else "| policy | RM score | KL to ref |"
    if has_judge:
        header += " judge win rate vs SFT | judge score |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in results.items():
        if has_gold:
            line = (f"| {labels.get(name, name)} | {r['gold_reward']:.3f} ± {r['gold_reward_stderr']:.3f} "
                    f"| {r['kl']:.3f} ± {r['kl_stderr']:.3f} | {r['win_rate']:.3f} ± {r['win_rate_stderr']:.3f} "
                    f"| {r['tie_rate']:.3f} | {r['rm_score']:.3f} |")
        else:
            line = (f"| {labels.get(name, name)} | {r['rm_score']:.3f} ± {r['rm_score_stderr']:.3f} "
                    f"| {r['kl']:.3f} ± {r['kl_stderr']:.3f} |")
        if has_judge:
            line += f" {r['judge_win_rate']:.3f} ± {r['judge_win_rate_stderr']:.3f} | {r['judge_score']:.3f} |"
        lines.append(line)
    return "\n".join(lines)
