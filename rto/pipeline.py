"""The experiment: SFT -> reward model -> DPO -> PPO (sentence or token reward) -> evaluation.

Each stage writes a `save_pretrained` folder under `<run>/checkpoints/<stage>`; a stage whose
folder exists (or whose `<stage>.checkpoint` path is set) is loaded instead of trained, so
`stage=ppo` or a re-run after a crash reuses what is done. Folders carry a manifest checked on load
(`rto.artifacts`); a stage interrupted mid-way resumes from `<stage>-resume/` (`rto.resume`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DistributedSampler, Subset
from torchdata.stateful_dataloader import StatefulDataLoader as DataLoader

from rto.artifacts import atomic_write_text, config_hash, publish_folder, verify_manifest, write_manifest
from rto.cache import StageCache, cacheable, stage_inputs, stage_key
from rto.data import DataBundle, PairCollator, PromptCollator, SFTCollator, load_data
from rto.data.preference_formats import chat_prompt
from rto.errors import MissingStageError
from rto.evaluation import evaluate, format_table
from rto.models import ScalarHeadModel, build_policy, load_policy, save_policy
from rto.models.factory import policy_tokenizer
from rto.models.retokenize import RewardScorer, check_same_tokenizer
from rto.models.reward import judge_scorer, new_critic, new_reward_model, reward_tokenizer
from rto.models.speed import fast_stage
from rto.resume import fit_resumable, keep_previous_logs
from rto.stages import DPOModule, PPOModule, RewardModelModule, SFTModule
from rto.stages.dpo import with_reference_logps

log = logging.getLogger(__name__)

STAGES = ("sft", "rm", "dpo", "ppo")
POLICY_LABELS = {"sentence": "PPO (sentence)", "token": "RTO (token)"}
# the config that determines each stage's weights (hashed into its manifest and resume checkpoints)
STAGE_CONFIG = {"sft": ("seed", "model", "data", "sft"), "rm": ("seed", "model", "data", "sft", "rm"),
                "dpo": ("seed", "model", "data", "sft", "dpo"),
                "ppo": ("seed", "model", "data", "sft", "rm", "dpo", "ppo", "reward", "beta")}


class Run:
    """One job's stages, sharing the data, the loggers and the run folder."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.out = Path(cfg.paths.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        tokenizer = policy_tokenizer(cfg.model)  # a pretrained model brings its tokenizer; None otherwise
        self.data: DataBundle = load_data(cfg.data, tokenizer)
        if tokenizer is not None:
            check_same_tokenizer(tokenizer, self.data.tokenizer, f"model.pretrained={cfg.model.pretrained}",
                                 f"data={cfg.data.name}")
        # the reward model may have its own tokenizer (reward_model=pretrained): its own encoder too
        self.rm_tokenizer = reward_tokenizer(cfg.reward_model, self.data.tokenizer)
        self.rm_encoder = dataclasses.replace(self.data.encoder, tokenizer=self.rm_tokenizer)
        keep_previous_logs(self.out)
        self.loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values()]
        self.metrics: dict[str, float] = {}
        self.cache = StageCache.from_config(cfg)
        self.last_trainer: Optional[L.Trainer] = None

    # ---- plumbing -------------------------------------------------------------------------
    def trainer(self, **overrides) -> L.Trainer:
        self.last_trainer = instantiate(self.cfg.trainer, logger=self.loggers or False,
                                        default_root_dir=str(self.out), **overrides)
        return self.last_trainer

    @property
    def is_global_zero(self) -> bool:
        """Rank 0 of a distributed run (or the only process) writes checkpoints and evaluates."""
        return self.last_trainer is None or self.last_trainer.is_global_zero

    def barrier(self) -> None:
        if self.last_trainer is not None:
            self.last_trainer.strategy.barrier()

    def loader(self, rows, collate, batch_size: int, shuffle: bool) -> DataLoader:
        """Shuffled: a training loader. Not shuffled: an evaluation loader, which Lightning shards itself."""
        if shuffle:
            return self.training_loader(rows, collate, batch_size, shuffle=True)
        return DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collate)

    def training_loader(self, rows, collate, batch_size: int, shuffle: bool) -> DataLoader:
        """`batch_size` rows per rank. The order (one seeded permutation per epoch, or the rows' own)
        is dealt to the ranks of the stage's trainer, rank r taking rows r, r + world, ...: each global
        step sees the same rows whatever the number of ranks (Lightning's own sampler would shuffle)."""
        trainer = self.last_trainer  # the stage's trainer, made just before its loaders
        sampler = DistributedSampler(rows, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                     shuffle=shuffle, seed=self.cfg.seed)
        # a StatefulDataLoader: a resumed stage goes on from the batch it stopped at (the sampler's
        # order depends on its seed and epoch alone, so it is replayed exactly)
        return DataLoader(rows, batch_size=batch_size, sampler=sampler, collate_fn=collate)

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        tok = self.data.tokenizer
        return [tok.decode(row[m.bool()].tolist(), skip_special_tokens=False) for row, m in zip(ids, mask)]

    def wants(self, stage: str) -> bool:
        return self.cfg.stage in ("all", stage)

    def checkpoint_path(self, stage: str) -> Optional[Path]:
        configured = self.cfg[stage].get("checkpoint")
        if configured:
            if not Path(configured).is_dir():
                raise MissingStageError(f"{stage}.checkpoint={configured} is not a folder")
            return Path(configured)
        path = self.ckpt_dir / stage
        return path if path.is_dir() else None

    def config_hash(self, stage: str) -> str:
        return config_hash(self.cfg, STAGE_CONFIG[stage])

    def resume_dir(self, stage: str) -> Path:
        return self.ckpt_dir / f"{stage}-resume"

    def fit(self, stage: str, module, loaders: Callable, **trainer_overrides) -> None:
        """`trainer.fit`, resumed from `<stage>-resume/` when an earlier run of this stage was interrupted.
        `loaders()` gives `(train, val)` once the stage's trainer exists: training rows are dealt to its ranks."""
        resume = self.cfg.resume
        module.on_nonfinite = self.cfg.on_nonfinite
        every = 1 if stage == "ppo" else resume.every_n_steps  # a PPO iteration is worth a checkpoint
        with fast_stage(module, self.cfg.compile):
            fit_resumable(partial(self.trainer, **trainer_overrides), module, loaders,
                          folder=self.resume_dir(stage), cfg_hash=self.config_hash(stage), every_n_steps=every,
                          enabled=resume.enabled)

    def save(self, stage: str, model) -> None:
        """Rank 0 writes (every rank holds the same weights after DDP); the others wait for the folder."""
        self.check_ranks_agree(stage, model)
        if self.is_global_zero:
            self.write_checkpoint(stage, model)
        self.barrier()

    def check_ranks_agree(self, stage: str, model) -> None:
        """Data-parallel ranks must end a stage with the same weights; if not, gradients were not synced."""
        if self.last_trainer is None or self.last_trainer.world_size == 1:
            return
        with torch.no_grad():
            checksum = torch.stack([p.double().sum() for p in model.parameters()]).sum()
        checksums = self.last_trainer.strategy.all_gather(checksum.to(self.last_trainer.strategy.root_device))
        if not torch.allclose(checksums, checksums[0], rtol=1e-9, atol=0):
            raise RuntimeError(f"{stage}: the ranks' weights differ after training (checksums {checksums.tolist()})")

    def write_checkpoint(self, stage: str, model) -> None:
        """Write to a temporary folder, then rename: a crash never leaves a half checkpoint."""
        final = self.ckpt_dir / stage
        tmp = self.ckpt_dir / f".{stage}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if isinstance(model, ScalarHeadModel):
            model.save_pretrained(tmp)
            self.rm_tokenizer.save_pretrained(tmp)
        else:
            save_policy(model, self.data.tokenizer, tmp)
        write_manifest(tmp, stage, self.config_hash(stage))
        if final.is_symlink():  # a link to a cache entry: this run's own folder replaces it
            final.unlink()
        publish_folder(tmp, final)
        shutil.rmtree(self.resume_dir(stage), ignore_errors=True)  # the finished stage supersedes them

    def obtain(self, stage: str, load: Callable, train: Callable):
        path = self.checkpoint_path(stage)
        if path is not None:
            log.info("%s: loading %s", stage, path)
            # a folder this run wrote must have its manifest; one given as `<stage>.checkpoint` may not
            verify_manifest(path, stage, self.config_hash(stage), require=not self.cfg[stage].get("checkpoint"))
            return load(path)
        key = stage_key(self.cfg, stage) if self.cache and cacheable(self.cfg, stage) else None
        if key is None:
            self.require(stage)
            return self.train_and_save(stage, train)
        with self.cache.lock(stage, key):  # a concurrent job with the same key waits, then hits
            cached = self.cache.lookup(stage, key)
            self.metrics[f"cache/{stage}_hit"] = float(cached is not None)
            if cached is not None:
                log.info("%s: cache hit %s (%s)", stage, key, cached)
                verify_manifest(cached, stage, self.config_hash(stage), require=True)
                self.link(stage, cached)
                return load(cached)
            self.require(stage)
            log.info("%s: cache miss %s", stage, key)
            model = self.train_and_save(stage, train)
            self.cache.publish(stage, key, self.ckpt_dir / stage, stage_inputs(self.cfg, stage))
            return model

    def require(self, stage: str) -> None:
        if not self.wants(stage):
            raise MissingStageError(
                f"stage={self.cfg.stage} needs the {stage} checkpoint, but {self.ckpt_dir / stage} does not exist; "
                f"run stage={stage} (or stage=all) in this run folder first, or set {stage}.checkpoint=<folder>")

    def train_and_save(self, stage: str, train: Callable):
        log.info("%s: training", stage)
        # each stage starts from its own seed: its fresh weights do not depend on what earlier stages
        # drew (or on whether they were loaded), and 1 or N data-parallel ranks draw alike
        L.seed_everything(self.cfg.seed + STAGES.index(stage), workers=True, verbose=False)
        start = time.perf_counter()
        model = train()
        self.metrics[f"time/{stage}_seconds"] = time.perf_counter() - start
        self.save(stage, model)
        return model

    def link(self, stage: str, cached: Path) -> None:
        """The run folder points at the cached stage, so `stage=...` re-runs in it find it too."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if (self.ckpt_dir / stage).is_symlink():
            (self.ckpt_dir / stage).unlink()
        (self.ckpt_dir / stage).symlink_to(cached.resolve(), target_is_directory=True)

    # ---- stages ---------------------------------------------------------------------------
    def sft(self):
        def train():
            cfg = self.cfg.sft
            policy = build_policy(self.cfg.model, self.data.tokenizer)
            collate = SFTCollator(self.data.encoder)
            self.fit("sft", SFTModule(policy, instantiate(cfg.optimizer)),
                     lambda: (self.loader(self.data.sft_rows, collate, cfg.batch_size, shuffle=True), None),
                     max_epochs=cfg.epochs)
            return policy
        return self.obtain("sft", lambda p: load_policy(p, self.cfg.model), train)

    def reward_model(self, sft):
        cfg = self.cfg.rm
        val = self.loader(self.data.val_pairs, PairCollator(self.rm_encoder), cfg.batch_size, shuffle=False) \
            if self.data.val_pairs else None

        def train():
            model = new_reward_model(self.cfg.reward_model, self.cfg.model, sft)
            self.fit("rm", RewardModelModule(model, instantiate(cfg.optimizer), share_prompt=cfg.share_prompt),
                     lambda: (self.loader(self.data.train_pairs, PairCollator(self.rm_encoder), cfg.batch_size,
                                          shuffle=True), None),
                     max_epochs=cfg.epochs)
            return model

        model = self.obtain("rm", ScalarHeadModel.from_pretrained, train)
        if val is not None:  # held-out preference accuracy, reported whether trained now or loaded
            module = RewardModelModule(model, instantiate(cfg.optimizer), share_prompt=cfg.share_prompt)
            result = self.trainer().validate(module, val, verbose=False)
            self.metrics["rm/val_accuracy"] = float(result[0]["rm/val_accuracy"])
            log.info("reward model held-out preference accuracy: %.3f", self.metrics["rm/val_accuracy"])
        return model

    def dpo(self, sft):
        def train():
            cfg = self.cfg.dpo
            policy = load_policy(self.saved_path("sft"), self.cfg.model)
            collate = PairCollator(self.data.encoder)
            train_pairs = self.data.train_pairs
            if cfg.precompute_ref:
                train_pairs = with_reference_logps(sft, train_pairs, collate, cfg.batch_size, cfg.share_prompt)
            val = self.loader(self.data.val_pairs, collate, cfg.batch_size, shuffle=False) if self.data.val_pairs else None
            self.fit("dpo", DPOModule(policy, sft, cfg.beta, instantiate(cfg.optimizer), share_prompt=cfg.share_prompt),
                     lambda: (self.loader(train_pairs, collate, cfg.batch_size, shuffle=True), val),
                     max_epochs=cfg.epochs)
            return policy
        return self.obtain("dpo", lambda p: load_policy(p, self.cfg.model), train)

    def ppo(self, sft, rm, dpo):
        def train():
            cfg = self.cfg.ppo
            actor = load_policy(self.saved_path("sft"), self.cfg.model)  # PPO starts from SFT, not DPO
            tok = self.data.tokenizer
            critic = new_critic(self.cfg.reward_model, self.cfg.model, self.saved_path("rm"), self.saved_path("sft"),
                                tok, self.rm_tokenizer)
            module = PPOModule(
                actor, critic, sft, self.scorer(rm), dpo if self.cfg.reward.name != "sentence" else None,
                ppo_cfg=cfg, reward_cfg=self.cfg.reward, beta=self.cfg.beta,
                actor_optimizer=instantiate(cfg.actor_optimizer), critic_optimizer=instantiate(cfg.critic_optimizer),
                eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, decode=self.decode, gold=self.data.gold,
                seed=self.cfg.seed)

            def prompts():
                # prompts drawn with replacement for the global batch (rollout_batch_size per rank), dealt
                # to the ranks: an iteration's rank batches are together the batch one process would draw
                draws = cfg.iterations * cfg.rollout_batch_size * self.last_trainer.world_size
                order = torch.randint(len(self.data.train_prompts), (draws,),
                                      generator=torch.Generator().manual_seed(self.cfg.seed))
                return self.training_loader(Subset(self.data.train_prompts, order.tolist()),
                                            PromptCollator(self.data.encoder), cfg.rollout_batch_size,
                                            shuffle=False), None
            # every PPO iteration is expensive and worth a log line
            self.fit("ppo", module, prompts, max_epochs=1, log_every_n_steps=1)
            return actor
        return self.obtain("ppo", lambda p: load_policy(p, self.cfg.model), train)

    def scorer(self, rm: ScalarHeadModel) -> RewardScorer:
        """The reward model as the policy's samples see it (re-tokenized if its tokenizer differs)."""
        return RewardScorer(rm, self.rm_encoder, self.data.tokenizer)

    def saved_path(self, stage: str) -> Path:
        """A fresh copy of a finished stage is loaded from disk rather than deep-copied in memory."""
        path = self.checkpoint_path(stage)
        if path is None:
            raise MissingStageError(f"{stage} must be saved before it is reused")
        return path

    def evaluate(self, sft, rm, dpo, policy) -> dict[str, float]:
        cfg = self.cfg.eval
        prompts = self.data.eval_prompts[:cfg.n_prompts]
        policies = {"sft": sft, "dpo": dpo, "policy": policy}
        start = time.perf_counter()
        judge = judge_scorer(cfg.get("judge"), self.data.encoder, self.data.tokenizer)
        results, samples = evaluate(policies, sft, self.scorer(rm), prompts, self.data.encoder, cfg, self.decode,
                                    self.data.gold, judge)
        self.metrics["time/eval_seconds"] = time.perf_counter() - start
        labels = {"sft": "SFT", "dpo": "DPO",
                  "policy": POLICY_LABELS.get(self.cfg.reward.name, f"PPO ({self.cfg.reward.name})")}
        table = format_table(results, labels)
        for name, result in results.items():
            self.metrics.update({f"eval/{name}/{k}": v for k, v in result.items()})
        self.write_outputs(table, samples)
        print(f"\n{table}\n")
        return self.metrics

    def write_outputs(self, table: str, samples) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "eval_table.md", table + "\n")
        atomic_write_text(self.out / "metrics.json", json.dumps(self.metrics, indent=2, sort_keys=True) + "\n")
        n = self.cfg.eval.n_samples_saved
        rows = [{"policy": name, "prompt": self.prompt_text(p), "response": r,
                 "gold": None if s.gold is None else float(s.gold[i]), "rm_score": float(s.rm_score[i]),
                 "judge": None if s.judge is None else float(s.judge[i])}
                for name, s in samples.items() for i, (p, r) in enumerate(zip(s.prompts[:n], s.responses[:n]))]
        atomic_write_text(self.out / "samples.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        for logger in self.loggers:
            logger.log_metrics(self.metrics)
            if hasattr(logger, "log_table") and rows:
                logger.log_table("eval/samples", columns=list(rows[0]), data=[list(r.values()) for r in rows])
            logger.save()

    def prompt_text(self, prompt) -> str:
        """A prompt as the policy saw it (chat template applied to a message list)."""
        return chat_prompt(self.data.tokenizer, prompt, self.data.encoder.chat_template)

    def finish(self) -> None:
        for logger in self.loggers:
            logger.finalize("success")
        if any(type(lg).__name__ == "WandbLogger" for lg in self.loggers):
            import wandb
            wandb.finish()


def configure_torch(cfg: DictConfig) -> None:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the stages `cfg.stage` asks for; return the evaluation metrics (empty if no eval ran)."""
    configure_torch(cfg)
    run_ = Run(cfg)
    try:
        if run_.loggers:
            for logger in run_.loggers:
                logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        stage = cfg.stage
        sft = run_.sft()
        if stage == "sft":
            return run_.metrics
        rm = run_.reward_model(sft) if stage != "dpo" else None
        if stage == "rm":
            return run_.metrics
        # classic PPO never reads the DPO model; only the table needs it
        needs_dpo = stage != "ppo" or cfg.reward.name != "sentence"
        dpo = run_.dpo(sft) if needs_dpo else None
        if stage == "dpo":
            return run_.metrics
        policy = run_.ppo(sft, rm, dpo)
        if stage == "ppo" or not run_.is_global_zero:  # evaluation runs on rank 0 alone
            return run_.metrics
        return run_.evaluate(sft, rm, dpo, policy)
    finally:
        run_.finish()
