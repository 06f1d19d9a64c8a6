"""Per-token signals of a run's policies, for the token page (`python -m rto.tokens`).

For each policy's responses to the same prompts, every response token gets:

- `dpo`: the DPO token reward, ``beta_1 * log pi_dpo/pi_ref`` as the run's reward hands it out
  (``reward.dpo_scale``, clipped by ``reward.dpo_clip``); a run whose reward does not use it
  (``reward=sentence``) shows DPO's own implicit reward ``dpo.beta * log pi_dpo/pi_ref``;
- `log_ratio`: the raw ``log pi_dpo/pi_ref``;
  (every model is read at RL's sampling temperature, ``ppo.temperature``, as PPO reads them)
- `kl`: the KL term of the reward, ``-beta * k_h`` (``ppo.kl_estimator``), with pi the policy that
  wrote the response;
- `reward`, `value`, `advantage`: what PPO's experience step (`rto.rl.experience.make_experience`)
  gives this response were the policy PPO's actor: the run's `reward=` variant, the final critic's
  ``V(s_h)``, GAE (whitened over the policy's responses when ``ppo.whiten_advantages``). The RM score
  is normalised with PPO's running statistics at the end of training, updated by these responses,
  as PPO's next iteration would;
- `gold` (embedded task): the gold reward's dense per-word term; the sequence part is a score.

Sequence scores per response: gold (dense + sequence), the reward model's raw score, the KL to
pi_ref (sum of ``log pi - log pi_ref``), the total reward.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from rto.algos.advantages import RunningMoments
from rto.algos.masked import as_bool, masked_sum
from rto.algos.rewards import kl_penalty
from rto.credit import aligned_gold, dpo_log_ratios
from rto.rl.experience import make_experience
from rto.rl.modes import inference_mode
from rto.rl.rollout import Rollout
from rto.rl.segments import segments_for

SIGNALS = ("dpo", "log_ratio", "kl", "reward", "value", "advantage", "gold")


@dataclass
class ResponseView:
    """One response of one policy: its tokens as text, a value per token for each signal, its scores."""

    policy: str
    prompt: str
    ids: list[int]
    tokens: list[str]
    signals: dict[str, list[float]]
    scores: dict[str, float] = field(default_factory=dict)


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's share of the decoded text (its spaces included), so the tokens read as the
    response. Where decoding is not prefix-stable (a character split across tokens), the token alone."""
    texts, previous = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[:i + 1], skip_special_tokens=False)
        texts.append(text[len(previous):] if text.startswith(previous)
                     else tokenizer.decode(ids[i:i + 1], skip_special_tokens=False))
        previous = text
    return texts


def dpo_signal(run_cfg, log_ratio: torch.Tensor, experience_dpo: Optional[torch.Tensor]) -> tuple[torch.Tensor, str]:
    """The DPO token reward shown, and its label."""
    if experience_dpo is not None and run_cfg.reward.dpo_scale > 0:
        return experience_dpo, f"DPO token reward β₁·log π_dpo/π_ref (reward.dpo_scale={run_cfg.reward.dpo_scale:g})"
    return run_cfg.dpo.beta * log_ratio, f"DPO implicit reward β·log π_dpo/π_ref (dpo.beta={run_cfg.dpo.beta:g})"


@dataclass
class RunModels:
    """What scores a response: pi_ref (the SFT policy), the DPO model, the reward model (a
    `RewardScorer`), PPO's final critic and its reward statistics (None: not normalised)."""

    reference: torch.nn.Module
    dpo: torch.nn.Module
    reward_model: torch.nn.Module
    critic: torch.nn.Module
    score_moments: Optional[RunningMoments]


@torch.no_grad()
def policy_views(run, models: RunModels, name: str, policy, prompts: list) -> tuple[list[ResponseView], str]:
    """The views of one policy's responses to `prompts` (`run`: a `RunFolder`; `name`: sft, dpo or
    policy, whose evaluation stream draws them), and the label of its DPO signal."""
    cfg = run.cfg
    inference_mode(policy, models.reference, models.dpo, models.reward_model, models.critic)
    moments = copy.deepcopy(models.score_moments)  # each policy from PPO's final statistics
    segments = segments_for(cfg.reward, run.tokenizer)
    views, start = [], 0
    for batch in run.sample(policy, name, prompts):
        chunk = list(prompts[start:start + len(batch["prompt_ids"])])
        start += len(chunk)
        rollout = Rollout(batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"],
                          chunk)
        exp = make_experience(rollout, actor=policy, critic=models.critic, reference=models.reference,
                              reward_model=models.reward_model, dpo_policy=models.dpo, reward_cfg=cfg.reward,
                              beta=cfg.beta, ppo_cfg=cfg.ppo, score_moments=moments, segments=segments)
        log_ratio = dpo_log_ratios(models.dpo, models.reference, batch, cfg.ppo.temperature)
        dpo, dpo_label = dpo_signal(cfg, log_ratio, exp.dpo_rewards)
        views += batch_views(run, name, chunk, batch, exp, {"dpo": dpo, "log_ratio": log_ratio}, models)
    return views, dpo_label


def batch_views(run, name: str, prompts: list, batch: dict, exp, dpo_signals: dict, models: RunModels) -> list:
    """One view per row of a sampled batch, from its experience (`make_experience`)."""
    cfg, tokenizer, mask = run.cfg, run.tokenizer, batch["response_mask"]
    per_token = {**dpo_signals,
                 "kl": -cfg.beta * kl_penalty(exp.logprobs, exp.ref_logprobs, mask, cfg.ppo.kl_estimator),
                 "reward": exp.rewards, "value": exp.values, "advantage": exp.advantages}
    rm_raw = models.reward_model.score(**batch, prompt_text=list(prompts))
    kl = masked_sum(exp.logprobs - exp.ref_logprobs, mask, dim=1)
    total_reward = masked_sum(exp.rewards, mask, dim=1)
    views = []
    for row, prompt in enumerate(prompts):
        real = as_bool(mask[row])
        ids = batch["response_ids"][row][real].tolist()
        signals = {key: [round(float(v), 5) for v in t[row][real]] for key, t in per_token.items()}
        scores = {"rm": float(rm_raw[row]), "rm_used": float(exp.score[row]), "kl": float(kl[row]),
                  "reward": float(total_reward[row])}
        if run.data.gold_tokens is not None:
            gold = aligned_gold(tokenizer, prompt, ids, run.data.gold_tokens)
            signals["gold"] = [float(v) for v in gold]
            total = float(run.data.gold([prompt], [tokenizer.decode(ids, skip_special_tokens=False)])[0])
            scores.update(gold=total, gold_dense=float(gold.sum()), gold_sequence=total - float(gold.sum()))
        elif run.data.gold is not None:
            scores["gold"] = float(run.data.gold([prompt], [tokenizer.decode(ids, skip_special_tokens=False)])[0])
        views.append(ResponseView(name, run.prompt_text(prompt), ids, token_texts(tokenizer, ids), signals, scores))
    return views


def signal_scales(views: list[ResponseView], quantile: float = 0.95) -> dict[str, float]:
    """Per signal, the |value| at which the colour saturates: a high quantile over the page's tokens
    other than each response's last, where the reward-model score lands; that score would otherwise
    wash out every other token of the `reward` signal (it shows saturated instead)."""
    scales = {}
    for key in SIGNALS:
        values = [np.abs(v.signals[key]) for v in views if key in v.signals]
        if not values:
            continue
        body = np.concatenate([v[:-1] for v in values])
        body = body if body.size else np.concatenate(values)
        scale = float(np.quantile(body, quantile))
        scales[key] = scale if scale > 0 else float(np.concatenate(values).max() or 1.0)
    return scales
