"""One sampling draw per decoding step: `torch.multinomial` against our inverse-CDF `draw_tokens`.

`torch.multinomial(probs, 1)` draws one exponential random number per vocabulary entry; `draw_tokens`
(rto/rl/rollout.py) draws one uniform number per row and searches the row's cumulative sum. The shapes
are those of this repository's benchmarks: 64 rows of the GPT-2 fixture's 260-token vocabulary
(`vs_trl.py`), 16 rows of SmolLM2's 49152 (`vs_trl.py --only ppo_smollm2`), 64 rows of GPT-2's 50257.
Each includes the softmax / log-softmax it needs; medians over `--repeats` calls.

    python benchmarks/token_draw.py [--threads 2] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from rto.rl.rollout import draw_tokens  # noqa: E402

SHAPES = [(64, 260), (16, 49152), (64, 50257)]


def median_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", default="benchmarks/results/token_draw.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for batch, vocab in SHAPES:
        logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(0))
        generator = torch.Generator().manual_seed(1)
        multinomial = median_ms(lambda: torch.multinomial(torch.softmax(logits, -1), 1, generator=generator),
                                args.repeats)
        ours = median_ms(lambda: draw_tokens(torch.log_softmax(logits, -1), generator), args.repeats)
        rows.append({"rows": batch, "vocabulary": vocab, "multinomial_ms": multinomial, "draw_tokens_ms": ours,
                     "speed_up": multinomial / ours})
    lines = ["| rows x vocabulary | torch.multinomial (ms) | draw_tokens (ms) | speed-up |", "|---|---|---|---|"]
    lines += [f"| {r['rows']} x {r['vocabulary']} | {r['multinomial_ms']:.3f} | {r['draw_tokens_ms']:.3f} | "
              f"{r['speed_up']:.0f}x |" for r in rows]
    md = "\n".join(lines)
    print(md)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/token_draw.py " + " ".join(sys.argv[1:])
    out.write_text(json.dumps({"command": command.strip(), "threads": args.threads, "load_average": os.getloadavg(),
                               "results": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"`{command.strip()}`, {args.threads} thread(s)\n\n{md}\n")


if __name__ == "__main__":
    main()
