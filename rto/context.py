"""What every stage of one job shares: the config, the data and tokenizers, the loggers, the
trainer of the stage in progress (ranks, barriers, data loaders dealt to the ranks) and the metrics
the job reports. Recipes (`rto.recipes`) read it; they never build loggers or trainers themselves."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Optional

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader as DataLoader

from rto.artifacts import config_hash
from rto.cache import may_run_several_processes, trainer_settings
from rto.config_stages import fsdp_strategy
from rto.data import DataBundle, load_data
from rto.data.validate import validate_pairs_for
from rto.loggers import build_loggers
from rto.preflight import check_context_length
from rto.data.preference_formats import chat_prompt
from rto.models.factory import policy_tokenizer
from rto.models.placement import off_step
from rto.models.pretrained_cache import share_frozen_weights
from rto.models.precision import autocast_dtype, frozen_weights_lowered, runs_on_cpu
from rto.models.prepacked import cpu_prepacked_linears
from rto.models.retokenize import RewardScorer, check_same_tokenizer
from rto.models.reward import reward_tokenizer
from rto.models.scalar_head import ScalarHeadModel
from rto.models.speed import fast_stage
from rto.resume import fit_resumable
from rto.stages.fsdp import buffer_dtypes, unwrap_trainer_models
from rto.rl.segments import segments_for


@contextlib.contextmanager
def stage_speedups(cfg: DictConfig, module) -> Iterator[None]:
    """What every stage's `trainer.fit` runs under: `compile=true`'s compiled models; under
    `bf16-mixed` on a CPU the frozen linear weights stored in bf16 (`frozen_weights_lowered`); on a CPU
    (`cpu_prepack`) the large frozen linear layers on oneDNN-packed weights (fp32, or those bf16
    copies). The benchmark workers enter it too, so that they time the path a run takes."""
    with fast_stage(module, cfg.compile), frozen_weights_lowered(cfg.trainer, module), \
            weights_prepacked(cfg, module, trainable=False):
        yield


def weights_prepacked(cfg: DictConfig, *models, trainable: bool):
    """`cpu_prepack.enabled=true` in a CPU process: the linear layers of `models` with weights of at
    least `cpu_prepack.min_weight_elements` on oneDNN-packed weights (`rto.models.prepacked`), the
    frozen ones only or, where nothing trains, all of them; in fp32 their fp32 weights, under
    `bf16-mixed` the bf16 copies the block runs on (entered inside `frozen_weights_lowered` /
    `computing_in`, which make them). Not with `compile=true` (compiled graphs take the plain layers)
    nor with several processes (as `frozen_weights_lowered`: DDP broadcasts the weights after the
    stage starts)."""
    prepack = cfg.get("cpu_prepack") or {}
    if (not prepack.get("enabled", False) or cfg.compile or not runs_on_cpu(cfg.trainer)
            or may_run_several_processes(cfg.trainer)):
        return contextlib.nullcontext()
    dtype = autocast_dtype(cfg.trainer.get("precision", "32-true")) or torch.float32
    return cpu_prepacked_linears(models, trainable=trainable, min_elements=prepack.get("min_weight_elements", 0),
                                 dtype=dtype)


class RunContext:
    """One job: its run folder, data, loggers, trainers and metrics."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        # FSDP flattens each block's weights on its own: frozen copies may not share them
        share_frozen_weights(not fsdp_strategy(cfg.trainer.get("strategy")))
        self.out = Path(cfg.paths.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        tokenizer = policy_tokenizer(cfg.model)  # a pretrained model brings its tokenizer; None otherwise
        self.data: DataBundle = load_data(cfg.data, tokenizer)
        check_context_length(cfg)  # prompt + response within the models' positions
        if tokenizer is not None:
            check_same_tokenizer(tokenizer, self.data.tokenizer, f"model.pretrained={cfg.model.pretrained}",
                                 f"data={cfg.data.name}")
        # the reward model may have its own tokenizer (reward_model=pretrained): its own encoder too
        self.rm_tokenizer = reward_tokenizer(cfg.reward_model, self.data.tokenizer)
        self.rm_encoder = dataclasses.replace(self.data.encoder, tokenizer=self.rm_tokenizer)
        self.check_reward_model_pairs()
        # where Semi-RTO's segments end (delimiter tokens of this tokenizer, or fixed windows); checked
        # here, before any training
        self.segments = segments_for(cfg.reward, self.data.tokenizer)
        self.loggers = build_loggers(cfg, self.out)  # a re-run into this folder continues its earlier runs
        self.metrics: dict[str, float] = {}
        self.last_trainer: Optional[L.Trainer] = None

    def check_reward_model_pairs(self) -> None:
        """The preference pairs in a separate reward model's tokens (its collator applies the same limits):
        at load, and again when the pairs stage has sampled them."""
        if self.rm_tokenizer is not self.data.tokenizer:
            validate_pairs_for(self.data, self.rm_encoder, self.cfg.data, "the reward model's tokenizer")

    # ---- trainers and ranks -----------------------------------------------------------------
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

    def check_ranks_agree(self, stage: str, model) -> None:
        """Data-parallel ranks must end a stage with the same weights; if not, gradients were not synced."""
        if self.last_trainer is None or self.last_trainer.world_size == 1 or not isinstance(model, torch.nn.Module):
            return  # (sampled pairs are drawn alike on every rank: same model, same seed)
        with torch.no_grad():
            checksum = torch.stack([p.double().sum() for p in model.parameters()]).sum()
        checksums = self.last_trainer.strategy.all_gather(checksum.to(self.last_trainer.strategy.root_device))
        if not torch.allclose(checksums, checksums[0], rtol=1e-9, atol=0):
            raise RuntimeError(f"{stage}: the ranks' weights differ after training (checksums {checksums.tolist()})")

    # ---- data loaders -----------------------------------------------------------------------
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

    # ---- training ---------------------------------------------------------------------------
    def config_hash(self, config_keys: tuple[str, ...]) -> str:
        """The hash of the config that determines a stage's weights (manifests, resume checkpoints)."""
        return config_hash(self.cfg, config_keys)

    def resume_hash(self, config_keys: tuple[str, ...]) -> str:
        """A resume checkpoint's config: the stage's and the trainer's numeric settings. A stage killed
        under one precision, device count or strategy is not resumed under another (its cache key holds
        the trainer's settings too)."""
        payload = json.dumps([self.config_hash(config_keys), trainer_settings(self.cfg)], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def resume_dir(self, stage: str) -> Path:
        return self.ckpt_dir / f"{stage}-resume"

    def fit(self, recipe, module, loaders: Callable, callbacks: tuple = (), **trainer_overrides) -> None:
        """`trainer.fit`, resumed from `<stage>-resume/` when an earlier run of this stage was interrupted.
        `loaders()` gives `(train, val)` once the stage's trainer exists: training rows are dealt to its ranks."""
        resume = self.cfg.resume
        module.on_nonfinite = self.cfg.on_nonfinite
        dtypes = buffer_dtypes(module)
        with stage_speedups(self.cfg, module):
            fit_resumable(partial(self.trainer, **trainer_overrides), module, loaders,
                          folder=self.resume_dir(recipe.name), cfg_hash=self.resume_hash(recipe.config_keys),
                          every_n_steps=recipe.resume_every or resume.every_n_steps, enabled=resume.enabled,
                          callbacks=callbacks)
        unwrap_trainer_models(self.last_trainer, dtypes)

    def validate(self, module, loader) -> list[dict]:
        """`trainer.validate` on a fresh trainer, the module's models plain again after it (on success:
        after a failure the other ranks may not join the gathers, and the failure is what to report)."""
        dtypes = buffer_dtypes(module)
        result = self.trainer().validate(module, loader, verbose=False)
        unwrap_trainer_models(self.last_trainer, dtypes)
        return result

    @contextlib.contextmanager
    def off_step(self, *models) -> Iterator[torch.device]:
        """Inference outside a training step (pairs sampling, DPO's precomputed reference, evaluation):
        on the run's device and in its precision (`rto.models.placement.off_step`); on a CPU every
        linear layer of `models` on packed weights meanwhile (nothing trains here). Yields the device."""
        with off_step(self.cfg.trainer, *models) as device, weights_prepacked(self.cfg, *models, trainable=True):
            yield device

    # ---- texts ------------------------------------------------------------------------------
    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        tok = self.data.tokenizer
        return [tok.decode(row[m.bool()].tolist(), skip_special_tokens=False) for row, m in zip(ids, mask)]

    def prompt_text(self, prompt) -> str:
        """A prompt as the policy saw it (chat template applied to a message list)."""
        return chat_prompt(self.data.tokenizer, prompt, self.data.encoder.chat_template)

    def scorer(self, rm: ScalarHeadModel) -> RewardScorer:
        """The reward model as the policy's samples see it (re-tokenized if its tokenizer differs)."""
        return RewardScorer(rm, self.rm_encoder, self.data.tokenizer)

    # ---- loggers ----------------------------------------------------------------------------
    def log_hyperparams(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(OmegaConf.to_container(self.cfg, resolve=True))

    def finish(self) -> None:
        for logger in self.loggers:
            logger.finalize("success")
        if any(type(lg).__name__ == "WandbLogger" for lg in self.loggers):
            import wandb
            wandb.finish()
