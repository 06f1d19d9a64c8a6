"""What every RL learner shares (PPO and the critic-free ones, `algo=`): one `training_step` is one
iteration, sample a rollout (k responses per prompt), score it once (the learner's `experience`),
then `ppo_epochs` passes of clipped policy updates over minibatches (`rto/stages/update.py`, with
micro-batches), plus the learner's own loss terms (`extra_losses`: PPO's critic). Optimisation is
manual: an iteration makes many optimizer steps, on one optimizer or two.

Modes and numbers (`rto/rl/modes.py`): sampling and experience run in eval mode, the update with
dropout off too, so pi_old and pi agree at the first minibatch (ratio 1); every model reads the
rollout at the sampling temperature; pi_old comes from the sampler only in full fp32, else from one
full forward in the update's precision (`sampler_logprobs_are_exact`). Under `bf16-mixed` (Lightning's
autocast around the whole step) sampling, experience and update all compute in bf16
(`rto.models.precision`).

Under DDP each rank samples its own prompts, each prompt's k samples on that rank (a group
baseline needs no other rank); reward normalisation, whitening, the adaptive KL coefficient, the
target-KL stop and the logged metrics use statistics over all ranks (`sum_over_ranks`). The frozen
reference, reward and DPO models have no trainable parameter, so DDP's reducer never syncs them,
and Lightning re-arms the reducer before every `manual_backward`, so every minibatch's gradients
are averaged over ranks.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import lightning as L
import torch
from omegaconf import DictConfig

from rto.algos.advantages import RunningMoments
from rto.algos.finite import NonFiniteError
from rto.algos.kl_control import KLController
from rto.models.forward import common_prefix_length
from rto.models.precision import sampling_in_autocast
from rto.rl.experience import Experience
from rto.rl.metrics import iteration_metrics, mean_response_kl
from rto.rl.modes import inference_mode
from rto.rl.rollout import Rollout, repeat_prompts, sample_responses, sampler_logprobs_are_exact
from rto.rl.segments import Segments, segments_for
from rto.stages.guard import NonFiniteGuard
from rto.stages.update import Losses, MinibatchUpdate

__all__ = ["Losses", "RLModule", "frozen"]


def frozen(module: Optional[torch.nn.Module]) -> Optional[torch.nn.Module]:
    return None if module is None else module.eval().requires_grad_(False)


class RLModule(NonFiniteGuard, MinibatchUpdate, L.LightningModule):
    """The shared loop. A learner says how a rollout becomes `Experience` (`experience`), which
    models it trains (`trained`) and what it adds to the policy loss (`extra_losses`)."""

    def __init__(self, actor, reference, reward_model, dpo_policy, *, ppo_cfg: DictConfig, reward_cfg: DictConfig,
                 beta: float, eos_id: int, pad_id: int, decode: Callable, gold: Optional[Callable] = None,
                 seed: int = 0, on_nonfinite: str = "raise", segments: Optional[Segments] = None,
                 kl_ctl: Optional[KLController] = None, samples_per_prompt: int = 1, kl_in_reward: bool = True):
        super().__init__()
        self.on_nonfinite = on_nonfinite
        self.automatic_optimization = False
        self.actor = actor
        self.reference, self.reward_model, self.dpo_policy = frozen(reference), frozen(reward_model), frozen(dpo_policy)
        self.ppo_cfg, self.reward_cfg = ppo_cfg, reward_cfg
        self.kl_ctl = kl_ctl or KLController(beta)  # beta_t: fixed (default) or adaptive
        self.samples_per_prompt, self.kl_in_reward = samples_per_prompt, kl_in_reward
        self.eos_id, self.pad_id = eos_id, pad_id
        self.decode, self.gold = decode, gold
        self.score_moments = RunningMoments() if ppo_cfg.normalize_rewards else None
        # Semi-RTO's segment ends; `reward=semi` needs the tokenizer's delimiters (built by the caller)
        self.segments = segments if segments is not None else segments_for(reward_cfg, None)
        # sampling and minibatch order draw from this generator, whose state travels in the resume
        # checkpoint: a resumed run draws exactly what the uninterrupted run would have drawn
        self.seed, self._generator, self._generator_state = seed, None, None

    # ---- what a learner provides --------------------------------------------------------------
    def trained(self) -> list[torch.nn.Module]:
        return [self.actor]

    def experience(self, rollout: Rollout, beta: float, iteration: int) -> Experience:
        raise NotImplementedError

    def extra_losses(self, mb: Experience) -> tuple[Losses, dict[str, torch.Tensor]]:
        return {}, {}

    # ---- state: random stream, running statistics, KL coefficient ------------------------------
    @property
    def generator(self) -> torch.Generator:
        if self._generator is None or self._generator.device != self.device:
            # one stream per data-parallel rank, so the ranks sample different responses
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed + self.global_rank)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        moments = None if self.score_moments is None else vars(self.score_moments)
        state = self.generator.get_state()
        # every rank's stream (each rank calls this hook; only rank 0 writes the file), so that each
        # resumes its own: with rank 0's alone, every rank would draw rank 0's responses after a resume
        gathered = self.all_gather(state.to(self.device)) if self.trainer.world_size > 1 else state[None]
        # each its own copy: a row of the gathered tensor is a view at an offset, which set_state misreads
        checkpoint["rto_ppo"] = {"generator": state, "generators": [s.cpu().clone() for s in gathered],
                                 "score_moments": dict(moments or {}), "kl_ctl": self.kl_ctl.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["rto_ppo"]
        streams = state.get("generators")  # absent from checkpoints written before it was kept
        same_world = streams is not None and len(streams) == self.trainer.world_size
        self._generator = None
        self._generator_state = (streams[self.global_rank] if same_world else state["generator"]).clone()
        if self.score_moments is not None:
            vars(self.score_moments).update(state["score_moments"])
        if "kl_ctl" in state:
            self.kl_ctl.load_state_dict(state["kl_ctl"])

    def on_train_start(self):
        # seed_everything gave every rank the same random stream: decorrelate the ranks' samples
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(t, reduce_op="sum")

    def mean_over_ranks(self, value: float) -> float:
        return float(self.trainer.strategy.reduce(torch.tensor(value, device=self.device), reduce_op="mean"))

    # ---- one iteration -------------------------------------------------------------------------
    def rollout(self, batch: dict, iteration: Optional[int] = None) -> Rollout:
        """k = `samples_per_prompt` responses to each prompt, the group's rows consecutive."""
        prompt_ids, prompt_mask, prompt_text = repeat_prompts(batch, self.samples_per_prompt)
        # the prompts' shared first tokens (a chat template's system prompt): run once by every forward
        # of this iteration, the same length for all of them. Not under a CPU's bf16 autocast, where the
        # prefix's extra forward call cost more than it saved (SmolLM2: 0.89x, against 1.16x in fp32)
        cpu_autocast = self.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        prefix_len = 0 if cpu_autocast else common_prefix_length(prompt_ids, prompt_mask,
                                                                 self.ppo_cfg.get("shared_prefix_min_tokens"))
        exact = sampler_logprobs_are_exact(self.actor)  # else the experience recomputes pi_old
        failed = None
        try:
            with sampling_in_autocast(self.actor):  # bf16-mixed on a CPU: bf16 weights while sampling
                response_ids, response_mask, *logprobs = sample_responses(
                    self.actor, prompt_ids, prompt_mask, self.ppo_cfg.max_new_tokens, self.eos_id, self.pad_id,
                    self.ppo_cfg.temperature, self.generator, return_logprobs=exact,
                    share_repeated=self.samples_per_prompt > 1,  # each prompt's forward once for its k samples
                    prefix_len=prefix_len)
        except NonFiniteError as err:  # a NaN policy: every rank stops (or skips the batch) together
            failed = NonFiniteError(err.name, iteration, err.count, err.total)
        self.raise_on_all_ranks("the policy's sampling distribution", failed, iteration)
        return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, prompt_text,
                       logprobs=logprobs[0] if exact else None, prefix_len=prefix_len)

    def training_step(self, batch, batch_idx):
        start = time.perf_counter()
        iteration, beta = batch_idx + 1, self.kl_ctl.value
        inference_mode(self.actor, self.reference, self.reward_model, self.dpo_policy, *self.trained())
        try:
            rollout = self.rollout(batch, iteration)
            sampling_seconds = time.perf_counter() - start
            experience = self.experience(rollout, beta, iteration)
        except NonFiniteError as err:
            self.skip_or_raise(err)
            return None  # skip: this rollout is not trained on
        rollout_seconds = time.perf_counter() - start
        metrics = self.update(experience, iteration, beta)
        if self.kl_ctl.kind == "adaptive":  # every rank takes the same step: the KL over all ranks
            n = rollout.response_ids.shape[0] * self.trainer.world_size
            self.kl_ctl.update(self.mean_over_ranks(mean_response_kl(experience)), n)
        metrics.update(iteration_metrics(self, rollout, experience, iteration, beta, start, rollout_seconds,
                                         sampling_seconds))
        # sync_dist: the logged value is the mean over ranks
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=rollout.response_ids.shape[0], sync_dist=True)
