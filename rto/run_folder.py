"""A finished run folder, read back for analysis: its config, data and checkpoints (`rto.tokens`,
`rto.credit`). Nothing here trains or writes; every model is loaded frozen, in eval mode.

Responses are drawn as the evaluation draws them (`rto.evaluation`): the prompts of `eval.prompt_set`
(test by default), batches of `eval.batch_size`, `eval.temperature` and `eval.max_new_tokens`, and
each policy's own random stream (`stream_seed(eval.seed, name)`), so a policy's responses here are
the ones the run's evaluation scored."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import rto.config  # noqa: F401 - registers the config's resolvers (package_dir)
from rto.artifacts import verify_manifest
from rto.data import DataBundle, encode_prompts, load_data
from rto.data.preference_formats import chat_prompt
from rto.errors import MissingStageError, UserError
from rto.evaluation import stream_seed
from rto.models import ScalarHeadModel, load_policy
from rto.models.critic import load_critic
from rto.models.factory import policy_tokenizer
from rto.models.retokenize import RewardScorer
from rto.models.reward import reward_tokenizer
from rto.rl.modes import inference_mode
from rto.rl.rollout import sample_responses

CONFIG = Path(".hydra") / "config.yaml"
# keys analyses read that older versions of rto did not write
REQUIRED_KEYS = ("eval.prompt_set", "eval.seed", "eval.batch_size", "eval.temperature", "ppo.temperature")


def load_run_config(folder: Path) -> DictConfig:
    if not (folder / CONFIG).is_file():
        raise UserError(f"{folder} is not a run folder: {CONFIG} is missing "
                        f"(give the folder `python -m rto.main` wrote, outputs/rto/runs/<time>)")
    cfg = OmegaConf.load(folder / CONFIG)
    missing = [key for key in REQUIRED_KEYS if OmegaConf.select(cfg, key, default="<absent>") == "<absent>"]
    if missing:
        raise UserError(f"{folder} was made by an older version of rto: its config has no {', '.join(missing)}; "
                        f"re-run it (its checkpoints can be reused with <stage>.checkpoint=<folder>)")
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder.resolve())  # `${hydra:...}` has no value outside Hydra
    return cfg


def first_rows(batch: dict, n: int) -> dict:
    """The first `n` rows of a sampled batch, responses trimmed to their longest real length."""
    width = max(1, int(batch["response_mask"][:n].sum(1).max()))
    return {key: value[:n, :width] if key.startswith("response") else value[:n] for key, value in batch.items()}


class RunFolder:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.cfg: DictConfig = load_run_config(self.folder)
        self.data: DataBundle = load_data(self.cfg.data, policy_tokenizer(self.cfg.model))
        self.tokenizer = self.data.tokenizer
        rm_tokenizer = reward_tokenizer(self.cfg.reward_model, self.tokenizer)
        self.rm_encoder = dataclasses.replace(self.data.encoder, tokenizer=rm_tokenizer)

    def checkpoint(self, stage: str) -> Path:
        """`<stage>.checkpoint` when the run was given one, else `checkpoints/<stage>`; its files verified."""
        configured = OmegaConf.select(self.cfg, f"{stage}.checkpoint", default=None)
        path = Path(configured) if configured else self.folder / "checkpoints" / stage
        if not path.is_dir():
            raise MissingStageError(f"{path} does not exist: the run has no finished {stage} stage")
        verify_manifest(path, stage, require=not configured)
        return path

    def policy(self, stage: str):
        model = load_policy(self.checkpoint(stage), self.cfg.model, trainable=False).requires_grad_(False)
        inference_mode(model)
        return model

    def reward_model(self) -> RewardScorer:
        model = ScalarHeadModel.from_pretrained(self.checkpoint("rm")).requires_grad_(False)
        inference_mode(model)
        return RewardScorer(model, self.rm_encoder, self.tokenizer)

    def critic(self):
        """PPO's final critic and its reward statistics (`rto.models.critic`)."""
        path = self.folder / "checkpoints" / "critic"
        if not path.is_dir():
            raise MissingStageError(f"{path} does not exist: the critic is saved when PPO ends (runs made "
                                    f"before that was added have none; re-run stage=ppo)")
        return load_critic(path)

    def prompts(self, n: int | None = None) -> list:
        """The first `n` prompts (default `eval.n_prompts`; None: all) of the evaluation's prompt set."""
        n = self.cfg.eval.n_prompts if n is None else n
        return list(self.data.prompts(self.cfg.eval.prompt_set)[:n])

    def prompt_text(self, prompt) -> str:
        """A prompt as the policy saw it (chat template applied to a message list), as in `samples.jsonl`."""
        return chat_prompt(self.tokenizer, prompt, self.data.encoder.chat_template)

    @torch.no_grad()
    def sample(self, policy, name: str, prompts: list) -> list[dict]:
        """Batches of prompt ids and `policy`'s responses, drawn as the evaluation draws policy `name`
        (sft, dpo or policy). The last batch is drawn whole, as in the evaluation, when `prompts`
        stops inside it (the rows past `prompts` are dropped), so the responses are the evaluation's
        for a CPU run. On the CPU in fp32: a GPU run's evaluation drew on its GPU in bf16
        (`rto.models.placement`), so for its folder these are other responses than its `samples.jsonl`."""
        cfg, encoder = self.cfg.eval, self.data.encoder
        inference_mode(policy)
        everything = self.data.prompts(cfg.prompt_set)
        assert list(everything[:len(prompts)]) == list(prompts), "prompts must be the first ones of eval.prompt_set"
        generator = torch.Generator().manual_seed(stream_seed(cfg.seed, name))
        batches = []
        for start in range(0, len(prompts), cfg.batch_size):
            batch = encode_prompts(encoder, everything[start:start + cfg.batch_size])
            batch["response_ids"], batch["response_mask"] = sample_responses(
                policy, batch["prompt_ids"], batch["prompt_mask"], cfg.max_new_tokens, self.tokenizer.eos_token_id,
                encoder.pad_id, cfg.temperature, generator)
            batches.append(first_rows(batch, len(prompts) - start))
        return batches

    def sample_texts(self, policy, name: str, prompts: list) -> list[str]:
        """`policy`'s responses as text (as a CPU run's `samples.jsonl` holds them)."""
        return [self.tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=False)
                for batch in self.sample(policy, name, prompts)
                for ids, m in zip(batch["response_ids"], batch["response_mask"])]
