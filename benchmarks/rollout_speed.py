"""Rollout generation tokens per second: our KV-cache sampler against `model.generate()`.

Same GPT-2 checkpoint and prompts as `vs_trl.py` (64 prompts, 24 new tokens), alternating, medians.
Tokens counted are the real (masked-in) response tokens both produce.

    python benchmarks/rollout_speed.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig

HERE = Path(__file__).resolve().parent
# this checkout's rto first (a venv may hold another checkout's editable install)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from shapes import SHAPES, write_fixtures  # noqa: E402

from rto.data.collate import Encoder, encode_prompts  # noqa: E402
from rto.models import load_policy  # noqa: E402
from rto.rl.rollout import sample_responses  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/rollout_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_fixtures(Path(tmp), n_prompts=SHAPES["rollout_batch_size"])
        tok = AutoTokenizer.from_pretrained(spec["model"])
        model = load_policy(spec["model"]).eval()
        prompts = json.loads(Path(spec["prompts"]).read_text())
    batch = encode_prompts(Encoder(tok, 32, SHAPES["max_new_tokens"]), prompts)
    n_new = SHAPES["max_new_tokens"]
    gen_cfg = GenerationConfig(max_new_tokens=n_new, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    def ours() -> int:
        _, mask = sample_responses(model, batch["prompt_ids"], batch["prompt_mask"], n_new, tok.eos_token_id,
                                   tok.pad_token_id)
        return int(mask.sum())

    @torch.no_grad()
    def hf_generate() -> int:
        out = model.generate(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"],
                             generation_config=gen_cfg)
        new = out[:, batch["prompt_ids"].shape[1]:]
        is_eos = (new == tok.eos_token_id).long()
        return int(((is_eos.cumsum(1) - is_eos) == 0).sum())

    rates = {"ours": [], "generate": []}
    for fn in (ours, hf_generate):
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("generate", hf_generate)):
            start = time.perf_counter()
            tokens = fn()
            rates[name].append(tokens / (time.perf_counter() - start))
    result = {name: statistics.median(r) for name, r in rates.items()}
    print(f"| sampler | tokens/s (median of {args.repeats}, {args.threads} thread(s)) |\n|---|---|")
    for name, rate in result.items():
        print(f"| {name} | {rate:.0f} |")
    print(f"\nours / generate: {result['ours'] / result['generate']:.2f}x")
    out = HERE.parent / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python benchmarks/rollout_speed.py " + " ".join(sys.argv[1:]),
                               "median_tokens_per_second": result, "all": rates, "threads": args.threads},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
