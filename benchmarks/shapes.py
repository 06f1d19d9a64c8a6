"""The benchmark's shared work: one tokenizer, one GPT-2 checkpoint, the prompts and the pairs.

Both sides load these same files (built here from config, never downloaded), so the models,
the vocabulary and the data are equal by construction. Shapes follow docs/BENCHMARKS.md:
a rollout of 64 responses, 24 new tokens, 4 PPO epochs over 2 minibatches of 32 (GRPO / RLOO: 16 prompts
x 4 samples, one pass over the 64 as one batch); policy, reference,
reward model and critic each a 4-layer 128-wide GPT-2 (~0.8M parameters); a DPO step on 64 pairs
of ~32 tokens each.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SHAPES = {
    "vocab_words": 252, "hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 512,
    "max_position_embeddings": 64,
    "rollout_batch_size": 64, "max_new_tokens": 24, "ppo_epochs": 4, "minibatch_size": 32, "group_size": 4,
    "prompt_words": (8, 16), "dpo_pairs": 64, "dpo_prompt_words": (8, 16), "dpo_response_words": (12, 20),
}
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def build_tokenizer(vocab_words: int = SHAPES["vocab_words"]) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + [f"w{i}" for i in range(vocab_words)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>", padding_side="left")


def _words(rng: random.Random, bounds: tuple[int, int]) -> str:
    return " ".join(f"w{rng.randrange(SHAPES['vocab_words'])}" for _ in range(rng.randint(*bounds)))


def write_fixtures(folder: Path, n_prompts: int, seed: int = 0) -> dict:
    """Write tokenizer + GPT-2 checkpoint (`folder/model`), prompts and pairs; return the spec."""
    from rto.models.factory import build_policy, save_policy  # main venv only

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model_cfg = OmegaConf.create({
        "arch": "gpt2", "pretrained": None, "dtype": "float32", "hidden_size": SHAPES["hidden_size"],
        "num_layers": SHAPES["num_layers"], "num_heads": SHAPES["num_heads"],
        "intermediate_size": SHAPES["intermediate_size"],
        "max_position_embeddings": SHAPES["max_position_embeddings"], "trust_remote_code": False,
        # TRL switches dropout off in every model it trains; our presets (Llama) have none
        "config_overrides": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0}})
    import torch
    torch.manual_seed(seed)
    policy = build_policy(model_cfg, tokenizer)
    save_policy(policy, tokenizer, folder / "model")
    rng = random.Random(seed)
    prompts = [_words(rng, SHAPES["prompt_words"]) for _ in range(n_prompts)]
    pairs = [{"prompt": _words(rng, SHAPES["dpo_prompt_words"]), "chosen": _words(rng, SHAPES["dpo_response_words"]),
              "rejected": _words(rng, SHAPES["dpo_response_words"])} for _ in range(n_prompts)]
    (folder / "prompts.json").write_text(json.dumps(prompts))
    (folder / "pairs.json").write_text(json.dumps(pairs))
    return {"model": str(folder / "model"), "prompts": str(folder / "prompts.json"),
            "pairs": str(folder / "pairs.json"), "n_params": sum(p.numel() for p in policy.parameters()),
            **SHAPES}
