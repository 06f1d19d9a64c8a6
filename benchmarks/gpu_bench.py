"""bf16 PPO / RTO / DPO on one GPU: seconds per iteration, rollout tokens/s, peak memory, MFU.

    python benchmarks/gpu_bench.py --out DIR                     # on a GPU machine (trainer=gpu, bf16-mixed)
    python benchmarks/gpu_bench.py --out DIR --smoke             # on a CPU: tiny models, checks the script

docs/BENCHMARKS.md, "On a GPU". The work is the benchmark worker's (ours_worker.py): the real
PPOModule / DPOModule under the configured Lightning trainer, models built from config (Llama of
about 125M and 500M parameters, written with save_pretrained and loaded back), no pipeline. Each
PPO rollout is 64 prompts of 64 tokens with 128 new tokens of FORCED length: the end-of-sequence id
handed to the sampler is one the model cannot emit. A DPO step is 64 pairs of the same lengths.

FLOPs are counted, not estimated: torch's FlopCounterMode records every matmul and attention of the
first (warm-up) iteration, forward and backward; the timed iterations run without it. MFU is those
FLOPs per second over the card's bf16 dense peak, both the one its vendor states and the one an
8192^3 bf16 matmul reaches here. Each work's figures are written as soon as it ends (`DIR/*.json`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel

# this checkout's rto first (a venv may hold another checkout's editable install)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from shapes import build_tokenizer  # noqa: E402

import rto.stages.learner as rl_loop  # noqa: E402  (the loop every learner shares: its sampler)
import rto.stages.update as rl_update  # noqa: E402  (its minibatch update: the policy loss)
from rto.data.collate import Encoder, PairCollator, PromptCollator  # noqa: E402
from rto.models import ScalarHeadModel, load_policy  # noqa: E402
from rto.models.factory import build_policy, save_policy  # noqa: E402
from rto.models.retokenize import RewardScorer  # noqa: E402
from rto.stages import DPOModule, PPOModule  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SIZES = {  # Llama shapes; the vocabulary (32000 words) adds 2 x 32000 x hidden parameters
    "125m": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 2048},
    "500m": {"hidden_size": 1280, "num_layers": 20, "num_heads": 20, "intermediate_size": 3456},
    "smoke": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128},
}
# vendor-stated dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a part of the device name
SPEC_BF16_TFLOPS = {"H200": 989.4, "H100 NVL": 835.5, "H100 PCIe": 756.5, "H100": 989.4, "A100": 312.0,
                    "L40S": 362.1, "A10": 125.0}
WORKS = ("ppo_sentence", "ppo_token", "dpo")


def spec_peak(name: str) -> float | None:
    return next((peak for part, peak in SPEC_BF16_TFLOPS.items() if part in name), None)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(n: int, repeats: int) -> float:
    """TFLOP/s of an n x n x n bf16 matmul, the best of `repeats` timed runs after a warm-up."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e12


class IterationClock(L.Callback):
    """Counts the first training step's FLOPs, then times every later step (device synchronised)."""

    def __init__(self):
        self.counter, self.flops, self.seconds, self._start = FlopCounterMode(display=False), 0, [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sync()
        if batch_idx == 0:
            self.counter.__enter__()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        sync()
        if batch_idx == 0:
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.get_total_flops()
        else:
            self.seconds.append(time.perf_counter() - self._start)


class SamplerSpy:
    """Wraps the PPO sampler (timing each rollout, counting its tokens) and the policy loss
    (recording the first minibatch's max |pi/pi_old - 1| over real tokens)."""

    def __init__(self):
        self.rollouts: list[tuple[float, int]] = []
        self.first_ratio_error: float | None = None
        self._sample, self._loss = rl_loop.sample_responses, rl_update.ppo_policy_loss

    def __enter__(self):
        def sample(*args, **kwargs):
            sync()
            start = time.perf_counter()
            out = self._sample(*args, **kwargs)
            sync()
            self.rollouts.append((time.perf_counter() - start, int(out[1].sum())))
            return out

        def loss(logprobs, old_logprobs, advantages, mask, clip_range):
            if self.first_ratio_error is None:
                real = mask.bool()
                self.first_ratio_error = float((logprobs - old_logprobs).detach().float()[real].exp()
                                               .sub(1).abs().max())
            return self._loss(logprobs, old_logprobs, advantages, mask, clip_range)

        rl_loop.sample_responses, rl_update.ppo_policy_loss = sample, loss
        return self

    def __exit__(self, *exc):
        rl_loop.sample_responses, rl_update.ppo_policy_loss = self._sample, self._loss


def write_model(folder: Path, size: str, vocab_words: int, context: int) -> tuple[str, int]:
    tokenizer = build_tokenizer(vocab_words)
    model_cfg = OmegaConf.create({"arch": "llama", "pretrained": None, "dtype": "float32", **SIZES[size],
                                  "max_position_embeddings": context, "trust_remote_code": False,
                                  "config_overrides": {}})
    torch.manual_seed(0)
    policy = build_policy(model_cfg, tokenizer)
    save_policy(policy, tokenizer, folder)
    return str(folder), sum(p.numel() for p in policy.parameters())


def compose_cfg(work: str, args) -> object:
    overrides = [f"reward={'token' if work == 'ppo_token' else 'sentence'}", f"trainer={args.trainer}", "logger=none",
                 f"ppo.rollout_batch_size={args.prompts}", f"ppo.minibatch_size={args.minibatch}",
                 f"ppo.ppo_epochs={args.epochs}", f"ppo.max_new_tokens={args.new_tokens}",
                 f"dpo.batch_size={args.prompts}",
                 # the reference's log-probs in every DPO step (TRL's default), not precomputed once
                 "dpo.precompute_ref=false"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def words(rng: random.Random, n: int, vocab_words: int) -> str:
    return " ".join(f"w{rng.randrange(vocab_words)}" for _ in range(n))


def build_work(work: str, model: str, cfg, args, tokenizer, encoder):
    """The module and a loader of (1 warm-up + iterations) batches, as ours_worker.py builds them."""
    rng = random.Random(0)
    steps = 1 + args.iterations
    if work == "dpo":
        pairs = [{"prompt": words(rng, args.prompt_tokens, args.vocab), "chosen": words(rng, args.new_tokens, args.vocab),
                  "rejected": words(rng, args.new_tokens, args.vocab)} for _ in range(args.prompts)]
        reference = load_policy(model)  # its log-probs in every step (compose_cfg: dpo.precompute_ref=false)
        module = DPOModule(load_policy(model), reference, cfg.dpo.beta, instantiate(cfg.dpo.optimizer),
                           share_prompt=cfg.dpo.share_prompt)
        sampler = RandomSampler(pairs, replacement=True, num_samples=steps * args.prompts)
        return module, DataLoader(pairs, batch_size=args.prompts, sampler=sampler, collate_fn=PairCollator(encoder))
    prompts = [words(rng, args.prompt_tokens, args.vocab) for _ in range(args.prompts)]
    scalar = lambda: ScalarHeadModel(AutoModel.from_pretrained(model))  # noqa: E731
    module = PPOModule(
        load_policy(model), scalar(), load_policy(model), RewardScorer(scalar(), encoder, tokenizer),
        load_policy(model) if work == "ppo_token" else None,
        ppo_cfg=cfg.ppo, reward_cfg=cfg.reward, beta=cfg.beta, actor_optimizer=instantiate(cfg.ppo.actor_optimizer),
        critic_optimizer=instantiate(cfg.ppo.critic_optimizer),
        eos_id=len(tokenizer) + 10,  # never sampled: every response runs to max_new_tokens
        pad_id=tokenizer.pad_token_id, decode=None, gold=None)
    sampler = RandomSampler(prompts, replacement=True, num_samples=steps * args.prompts)
    return module, DataLoader(prompts, batch_size=args.prompts, sampler=sampler, collate_fn=PromptCollator(encoder),
                              drop_last=True)


def run_work(work: str, size: str, model: str, n_params: int, args, peaks: dict) -> dict:
    cfg = compose_cfg(work, args)
    L.seed_everything(0, verbose=False)
    tokenizer = build_tokenizer(args.vocab)
    encoder = Encoder(tokenizer, max_prompt_tokens=args.prompt_tokens, max_response_tokens=args.new_tokens,
                      append_eos=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    module, loader = build_work(work, model, cfg, args, tokenizer, encoder)
    clock = IterationClock()
    trainer = instantiate(cfg.trainer, logger=False, max_epochs=1, callbacks=[clock])
    start = time.perf_counter()
    with SamplerSpy() as spy:
        trainer.fit(module, loader)
    seconds = sorted(clock.seconds)
    per_iteration = seconds[len(seconds) // 2]
    achieved = clock.flops / per_iteration / 1e12
    result = {"work": work, "size": size, "n_params": n_params, "trainer": args.trainer,
              "precision": str(cfg.trainer.precision), "iterations_timed": len(seconds),
              "seconds_per_iteration": seconds, "median_seconds_per_iteration": per_iteration,
              "flops_per_iteration": clock.flops, "achieved_tflops": achieved,
              "mfu_vs_spec": achieved / peaks["spec_tflops"] if peaks.get("spec_tflops") else None,
              "mfu_vs_measured": achieved / peaks["measured_tflops"],
              "wall_seconds": time.perf_counter() - start,
              "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None}
    if work != "dpo":
        timed = spy.rollouts[1:]
        rollout_seconds = sorted(s for s, _ in timed)[len(timed) // 2]
        result.update(rollout_tokens=[n for _, n in timed], median_rollout_seconds=rollout_seconds,
                      rollout_tokens_per_second=args.prompts * args.new_tokens / rollout_seconds,
                      rollout_share_of_iteration=rollout_seconds / per_iteration,
                      first_minibatch_ratio_error=spy.first_ratio_error)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default="125m,500m")
    parser.add_argument("--works", default=",".join(WORKS))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--minibatch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--trainer", default="gpu")
    parser.add_argument("--matmul", type=int, default=8192)
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny model and shapes, trainer=cpu")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.prompts, args.prompt_tokens, args.new_tokens, args.minibatch = "smoke", 4, 8, 8, 2
        args.epochs, args.iterations, args.vocab, args.trainer, args.matmul = 1, 2, 300, "cpu", 512
    args.device = "cuda" if args.trainer == "gpu" else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peaks = {"device": device, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
             "matmul_n": args.matmul, "measured_tflops": matmul_peak(args.matmul, 10), "spec_tflops": spec_peak(device)}
    print(json.dumps(peaks), flush=True)
    (args.out / "peak.json").write_text(json.dumps(peaks, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            model, n_params = write_model(Path(tmp) / size, size, args.vocab, args.prompt_tokens + args.new_tokens + 8)
            for work in args.works.split(","):
                try:
                    result = run_work(work, size, model, n_params, args, peaks)
                except Exception as err:  # one work's failure (say, out of memory) keeps the others' figures
                    result = {"work": work, "size": size, "error": f"{type(err).__name__}: {err}"[:2000]}
                print(json.dumps(result), flush=True)
                (args.out / f"{size}_{work}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
