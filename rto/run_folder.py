"""A finished run folder, read back for analysis: its config, data and checkpoints (`rto.tokens`,
`rto.credit`). Nothing here trains or writes; every model is loaded frozen, in eval mode."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import rto.config  # noqa: F401 - registers the config's resolvers (package_dir)
from rto.artifacts import verify_manifest
from rto.data import DataBundle, encode_prompts, load_data
from rto.models import ScalarHeadModel, load_policy
from rto.models.critic import load_critic
from rto.models.factory import policy_tokenizer
from rto.models.retokenize import RewardScorer
from rto.models.reward import reward_tokenizer
from rto.rl.rollout import sample_responses

CONFIG = Path(".hydra") / "config.yaml"


def held_out_prompts(data: DataBundle, n: int) -> list:
    """The prompts analyses sample on: the first `n` held-out prompts (no training row uses them)."""
    return list(data.eval_prompts[:n])


class RunFolder:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / CONFIG).is_file():
            raise FileNotFoundError(f"{self.folder} is not a run folder: {CONFIG} is missing "
                                    f"(give the folder `python -m rto.main` wrote, outputs/rto/runs/<time>)")
        cfg = OmegaConf.load(self.folder / CONFIG)
        with open_dict(cfg):
            cfg.paths.output_dir = str(self.folder.resolve())  # `${hydra:...}` has no value outside Hydra
        self.cfg: DictConfig = cfg
        self.data: DataBundle = load_data(cfg.data, policy_tokenizer(cfg.model))
        self.tokenizer = self.data.tokenizer
        rm_tokenizer = reward_tokenizer(cfg.reward_model, self.tokenizer)
        self.rm_encoder = dataclasses.replace(self.data.encoder, tokenizer=rm_tokenizer)

    def checkpoint(self, stage: str) -> Path:
        """`<stage>.checkpoint` when the run was given one, else `checkpoints/<stage>`; its files verified."""
        configured = OmegaConf.select(self.cfg, f"{stage}.checkpoint", default=None)
        path = Path(configured) if configured else self.folder / "checkpoints" / stage
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist: the run has no finished {stage} stage")
        verify_manifest(path, stage, require=not configured)
        return path

    def policy(self, stage: str):
        return load_policy(self.checkpoint(stage), self.cfg.model, trainable=False).eval().requires_grad_(False)

    def reward_model(self) -> RewardScorer:
        model = ScalarHeadModel.from_pretrained(self.checkpoint("rm")).eval().requires_grad_(False)
        return RewardScorer(model, self.rm_encoder, self.tokenizer).eval()

    def critic(self):
        """PPO's final critic and its reward statistics (`rto.models.critic`)."""
        path = self.folder / "checkpoints" / "critic"
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist: the critic is saved when PPO ends (runs made "
                                    f"before that was added have none; re-run stage=ppo)")
        return load_critic(path)

    def prompts(self, n: int) -> list:
        return held_out_prompts(self.data, n)

    @torch.no_grad()
    def sample(self, policy, prompts: list, generator: torch.Generator) -> dict:
        """One batch: the prompts' ids and the policy's responses, with the evaluation's sampling settings."""
        cfg, encoder = self.cfg.eval, self.data.encoder
        batch = encode_prompts(encoder, prompts)
        batch["response_ids"], batch["response_mask"] = sample_responses(
            policy, batch["prompt_ids"], batch["prompt_mask"], cfg.max_new_tokens, self.tokenizer.eos_token_id,
            encoder.pad_id, cfg.temperature, generator)
        return batch

    def sample_texts(self, policy, prompts: list) -> list[str]:
        """Responses as text, as the evaluation draws them: batches of `eval.batch_size` from one
        random stream seeded with `eval.seed` (so the SFT policy's are the evaluation's own)."""
        generator, size, texts = torch.Generator().manual_seed(self.cfg.eval.seed), self.cfg.eval.batch_size, []
        for start in range(0, len(prompts), size):
            batch = self.sample(policy, prompts[start:start + size], generator)
            texts += [self.tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=False)
                      for ids, m in zip(batch["response_ids"], batch["response_mask"])]
        return texts
