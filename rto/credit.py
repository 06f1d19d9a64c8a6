"""Credit assignment: do DPO's token rewards point at the tokens the gold reward credits?

On the embedded task the gold reward has a dense part with one term per word (`rto/tasks/embedded/gold.py`).
The metric pairs, token by token over held-out responses, the DPO token reward
``log pi_dpo(y_h|s_h) - log pi_ref(y_h|s_h)`` with that word's gold term, and reports their
Spearman and Pearson correlations. Both are invariant to a positive scale, so the DPO reward's
weight (``reward.dpo_scale`` or ``dpo.beta``) does not enter. Both models are read at the sampling
temperature of RL (``ppo.temperature``), as the token reward RTO hands out is.

The responses are the SFT policy's samples of the evaluation (`eval.prompt_set`, test by default;
the first `eval.n_prompts`; the SFT policy's own stream, `rto.evaluation.stream_seed`), so the
evaluation's `eval/credit/*` and `python -m rto.credit` give the same numbers for a CPU run (the
command re-samples on the CPU in fp32; a GPU run's evaluation sampled on its GPU in bf16).

Tokens and words: the task's tokenizer is word-level, one token per word; `word_tokens` checks that
for every token rather than assuming it. Padding is left out by the response mask. `<eos>` is left
out too: its dense gold term is 0 by definition, while the end token carries sequence-level credit
(length, missing end) that no per-word term describes.

    python -m rto.credit <run folder>     # the metric from a run's SFT and DPO checkpoints
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from lightning.fabric.utilities import move_data_to_device
from torch import Tensor

from rto.algos.masked import as_bool, masked_fill_zero
from rto.data.bundle import GoldTokens
from rto.data.collate import Encoder, encode_prompts, right_pad
from rto.errors import UserError
from rto.models.forward import policy_logprobs
from rto.models.precision import device_of
from rto.rl.modes import inference_mode


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (as Spearman's rho needs)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; nan when either side is constant (no correlation is defined)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denominator) if denominator > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def credit_correlation(dpo_rewards: np.ndarray, gold_rewards: np.ndarray) -> dict[str, float]:
    """`{spearman, pearson, tokens}` over paired per-token values."""
    return {"spearman": spearman(dpo_rewards, gold_rewards), "pearson": pearson(dpo_rewards, gold_rewards),
            "tokens": float(len(dpo_rewards))}


def word_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """The word each token id stands for. ValueError unless the decoded text is exactly the tokens
    joined by spaces, one word per token (a subword tokenizer splits words across tokens)."""
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    words = tokenizer.decode(list(ids), skip_special_tokens=False).split()
    if words != tokens:
        raise ValueError(f"tokens {tokens[:8]} are not the words {words[:8]} of the decoded text: per-word gold "
                         f"rewards need a word-level tokenizer (the embedded task's)")
    return words


def aligned_gold(tokenizer, prompt: str, ids: Sequence[int], gold_tokens: GoldTokens) -> np.ndarray:
    """The gold per-word reward of each token of one response's real ids (`<eos>` included: 0)."""
    words = word_tokens(tokenizer, ids)
    gold = np.asarray(gold_tokens(prompt, " ".join(words)), dtype=float)
    if len(gold) != len(words):
        raise ValueError(f"{len(gold)} gold terms for {len(words)} tokens")
    return gold


def credit_pairs(prompts: Sequence[str], response_ids: Tensor, response_mask: Tensor, log_ratios: Tensor,
                 tokenizer, gold_tokens: GoldTokens) -> tuple[np.ndarray, np.ndarray]:
    """Flattened `(DPO log-ratio, gold per-word reward)` of every real, non-`<eos>` response token."""
    ratios, golds = [], []
    for prompt, ids, mask, ratio in zip(prompts, response_ids, as_bool(response_mask), log_ratios):
        ids, ratio = ids[mask].tolist(), ratio[mask].double().numpy()
        gold = aligned_gold(tokenizer, prompt, ids, gold_tokens)
        words = np.asarray(ids) != tokenizer.eos_token_id
        ratios.append(ratio[words])
        golds.append(gold[words])
    return np.concatenate(ratios or [np.zeros(0)]), np.concatenate(golds or [np.zeros(0)])


@torch.no_grad()
def dpo_log_ratios(dpo, reference, batch: dict, temperature: float = 1.0) -> Tensor:
    """``log pi_dpo(y_h|s_h) - log pi_ref(y_h|s_h)`` of the batch's response tokens ``[B, R]``, both read
    at `temperature` (RL's sampling temperature, as `rto.rl.experience` reads them), 0 on padding."""
    inference_mode(dpo, reference)
    return masked_fill_zero(policy_logprobs(dpo, batch, temperature=temperature)[0]
                            - policy_logprobs(reference, batch, temperature=temperature)[0], batch["response_mask"])


@torch.no_grad()
def credit_on_texts(dpo, reference, prompts: Sequence[str], responses: Sequence[str], encoder: Encoder,
                    gold_tokens: GoldTokens, batch_size: int = 128, temperature: float = 1.0) -> dict[str, float]:
    """The metric on (prompt, response) texts, e.g. the evaluation's samples of the SFT policy."""
    ratios, golds = [], []
    device = device_of([dpo])  # the GPU on a GPU run (`rto.models.placement`)
    for start in range(0, len(prompts), batch_size):
        chunk, texts = list(prompts[start:start + batch_size]), list(responses[start:start + batch_size])
        batch = encode_prompts(encoder, chunk)
        batch["response_ids"], batch["response_mask"] = right_pad(encoder.responses(texts, chunk),
                                                                  encoder.pad_id)
        log_ratios = dpo_log_ratios(dpo, reference, move_data_to_device(batch, device), temperature).cpu()
        x, y = credit_pairs(chunk, batch["response_ids"], batch["response_mask"], log_ratios, encoder.tokenizer,
                            gold_tokens)
        ratios.append(x)
        golds.append(y)
    return credit_correlation(np.concatenate(ratios), np.concatenate(golds))


def credit_of_run(folder: Path, n_prompts: Optional[int] = None) -> dict[str, float]:
    """The metric of a run folder's DPO model, on its SFT policy's samples of the evaluation's prompts."""
    from rto.run_folder import RunFolder  # loads checkpoints: only the command needs it

    run = RunFolder(folder)
    if run.data.gold_tokens is None:
        raise UserError(f"{folder}: data={run.cfg.data.name} has no per-word gold reward (only data=embedded has)")
    sft, dpo = run.policy("sft"), run.policy("dpo")
    prompts = run.prompts(n_prompts)
    texts = run.sample_texts(sft, "sft", prompts)
    return credit_on_texts(dpo, sft, prompts, texts, run.data.encoder, run.data.gold_tokens, run.cfg.eval.batch_size,
                           run.cfg.ppo.temperature)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rto.credit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a run folder with checkpoints/sft and checkpoints/dpo")
    parser.add_argument("--n-prompts", type=int,
                        help="the first N prompts of the run's eval.prompt_set (default: eval.n_prompts)")
    args = parser.parse_args(argv)
    try:
        metrics = credit_of_run(args.folder, args.n_prompts)
    except UserError as err:
        sys.exit(f"error: {err}")
    print(json.dumps({f"credit/{k}": v for k, v in metrics.items()}, indent=2))


if __name__ == "__main__":
    main()
