"""The update's activation memory of docs/MEMORY.md's formula (`rto.models.memory`) against a measurement:
one forward and backward of the PPO policy loss on a model of SmolLM2-135M's shape (built from its
config, random weights, fp32, CPU): the RSS the forward adds (what it keeps for the backward), and
the backward's peak above that plus the gradients. RSS is coarse (the allocator keeps some freed memory).

    python benchmarks/memory_check.py                          # 2 rows x (128 prompt + 128 response) tokens
    python benchmarks/memory_check.py --rows 4 --checkpointing

Each setting runs in a fresh process (the peak is the process's VmHWM, reset after a small warm-up forward).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rto
PREFIX = "@@MEMORY "


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no /proc/self/status (Linux only)")


def measure(rows: int, prompt: int, response: int, checkpointing: bool) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rto.algos.losses import ppo_policy_loss
    from rto.models.forward import policy_logprobs
    from rto.models.memory import SMOLLM2_135M as shape

    torch.manual_seed(0)
    torch.set_num_threads(2)
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                         num_attention_heads=9, num_key_value_heads=3, intermediate_size=shape.ffn,
                         max_position_embeddings=2048, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for layer in model.model.layers:
            layer.training = True  # as the update runs it (rto/rl/modes.py)
    batch = {"prompt_ids": torch.randint(shape.vocab, (rows, prompt)), "prompt_mask": torch.ones(rows, prompt),
             "response_ids": torch.randint(shape.vocab, (rows, response)), "response_mask": torch.ones(rows, response)}
    with torch.no_grad():  # warm-up: kernels and allocator caches, not counted
        policy_logprobs(model, {k: v[:1, :8] for k, v in batch.items()})
    before = status_mib("VmRSS")
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    logprobs, _ = policy_logprobs(model, batch)
    loss, _ = ppo_policy_loss(logprobs, logprobs.detach(), torch.randn(rows, response), batch["response_mask"], 0.2)
    kept = status_mib("VmRSS") - before  # what the forward keeps for the backward (the formula's term)
    loss.backward()
    grads = sum(p.numel() * 4 for p in model.parameters()) / 2 ** 20  # the gradients, held past the backward
    return {"kept_after_forward_mib": kept, "backward_peak_above_gradients_mib": status_mib("VmHWM") - before - grads,
            "gradients_mib": grads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--response", type=int, default=128)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(PREFIX + json.dumps(measure(args.rows, args.prompt, args.response, args.checkpointing)), flush=True)
        return
    from rto.models.memory import SMOLLM2_135M as shape

    tokens = args.rows * (args.prompt + args.response)
    formula = (args.rows * args.response * 3 * 4 * shape.vocab
               + 4 * shape.activation_values(tokens, args.checkpointing)) / 2 ** 20
    proc = subprocess.run([sys.executable, __file__, "--worker", *sys.argv[1:]], capture_output=True, text=True,
                          cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode or not lines:
        raise SystemExit(proc.stderr[-3000:])
    result = json.loads(lines[-1][len(PREFIX):])
    print(f"SmolLM2-135M shape, fp32, {args.rows} rows x ({args.prompt} + {args.response}) tokens, "
          f"checkpointing={args.checkpointing}: the forward keeps {result['kept_after_forward_mib']:.0f} MiB for the "
          f"backward (RSS after the forward, above before it), the backward peaks "
          f"{result['backward_peak_above_gradients_mib']:.0f} MiB above the {result['gradients_mib']:.0f} MiB of "
          f"gradients; the formula's update term: {formula:.0f} MiB")


if __name__ == "__main__":
    main()
