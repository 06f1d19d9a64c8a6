"""Checks that relate the training stages' config keys, run once every key has passed its own rule
(`rto.config.validate`): the RL learner's sampling budget, how the RL and earlier stages split their
batches, and the trainer flags a stage's optimisation cannot take."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig, OmegaConf

from rto.algos.rewards import reward_variant


def walked_stages(cfg: DictConfig) -> set[str]:
    """The stages this job walks (`rto.pipeline.plan`: the one `stage=` names and those it needs)."""
    from rto.pipeline import plan  # here, not at the top: the pipeline's modules import this one

    return {recipe.name for recipe in plan(cfg)}


def trained_stages(cfg: DictConfig) -> set[str]:
    """The stages this job may train (`rto.pipeline.may_train`); the others it walks are loaded."""
    from rto.pipeline import may_train

    return {stage for stage in walked_stages(cfg) if may_train(cfg, stage)}


def stage_problems(cfg: DictConfig) -> list[str]:
    problems = learner_problems(cfg)
    problems += [] if problems else rl_batch_problems(cfg)
    return problems + ([] if problems else trainer_flag_problems(cfg))


def learner_problems(cfg: DictConfig) -> list[str]:
    """`algo.*` against the learner registry, the response budget, and a SimPO model as a reward source."""
    from rto.recipes.rl import LEARNERS  # the registry imports the stages (and they this module)

    problems, algo = [], cfg.get("algo")
    if algo is not None:
        if algo.get("name") not in LEARNERS:
            return [f"algo.name must be one of {', '.join(LEARNERS)}, got {algo.get('name')!r}"]
        k, least = algo.samples_per_prompt, LEARNERS[algo.name].min_samples_per_prompt
        if k < least:
            problems.append(f"algo={algo.name} compares each response with the prompt's other samples: "
                            f"algo.samples_per_prompt must be >= {least}, got {k}")
        ppo = cfg.get("ppo")
        if ppo is not None and ppo.rollout_batch_size % k:
            problems.append(f"ppo.rollout_batch_size ({ppo.rollout_batch_size}, sampled responses per rank) must be "
                            f"a multiple of algo.samples_per_prompt ({k}): a prompt's samples stay together")
    dpo_loss = OmegaConf.select(cfg, "dpo.loss", default="sigmoid")
    if dpo_loss == "simpo" and reward_variant(cfg.reward.name).uses_dpo and "ppo" in walked_stages(cfg):
        problems.append(f"reward={cfg.reward.name} reads the DPO model's beta * log pi/pi_ref as its reward, "
                        "which a reference-free SimPO model (dpo.loss=simpo) does not have: train SimPO as a "
                        "baseline row (dpo=simpo eval.policies=[sft,dpo]) and RTO with dpo.loss=sigmoid or ipo")
    return problems


def rl_batch_problems(cfg: DictConfig) -> list[str]:
    """A minibatch within the rollout, a micro-batch within the minibatch."""
    ppo = cfg.get("ppo")
    if ppo is None:
        return []
    if ppo.minibatch_size > ppo.rollout_batch_size:
        return [f"ppo.minibatch_size ({ppo.minibatch_size}) must not exceed "
                f"ppo.rollout_batch_size ({ppo.rollout_batch_size})"]
    micro = ppo.get("micro_batch_size")
    if micro is not None and micro > ppo.minibatch_size:
        return [f"ppo.micro_batch_size ({micro}) must not exceed ppo.minibatch_size ({ppo.minibatch_size}): "
                f"it splits a minibatch (null: no split)"]
    return []


def fsdp_strategy(strategy) -> bool:
    """`trainer.strategy` names FSDP: a string of Lightning's registry ("fsdp", "fsdp_cpu_offload"), or
    a node whose `_target_` is Lightning's `FSDPStrategy` or a subclass of it."""
    if strategy is None:
        return False
    if isinstance(strategy, str):
        return "fsdp" in strategy.lower()
    target = str(strategy.get("_target_", "") or "")
    module, _, name = target.rpartition(".")
    try:
        from lightning.pytorch.strategies import FSDPStrategy

        found = getattr(importlib.import_module(module), name)
        return isinstance(found, type) and issubclass(found, FSDPStrategy)
    except (ImportError, AttributeError, ValueError):  # not importable here: judge by its name
        return "fsdp" in target.lower()


def trainer_flag_problems(cfg: DictConfig) -> list[str]:
    """`sft/rm/dpo.micro_batch_size` split a batch, so at most its size. A split stage optimises
    manually (one backward per micro-batch, one step per batch), as the RL stage always does: Lightning
    refuses its trainer-wide gradient clipping and accumulation flags there, and its DeepSpeed
    strategy's engine is not run with several backwards per step here. A stage's own `max_grad_norm`
    and `trainer.gradient_clip_val` would clip one step twice; DeepSpeed clips inside its engine, with
    the trainer's value only. Only the stages this job may train count."""
    trained = trained_stages(cfg)
    strategy = OmegaConf.select(cfg, "trainer.strategy", default=None)
    deepspeed = isinstance(strategy, str) and strategy.startswith("deepspeed")
    clip = OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None)
    problems, manual, own_clip = [], [], []
    for stage in ("sft", "rm", "dpo"):
        node = cfg.get(stage)
        micro = node.get("micro_batch_size") if node is not None else None
        if micro is not None and micro > node.batch_size:
            problems.append(f"{stage}.micro_batch_size ({micro}) must not exceed {stage}.batch_size "
                            f"({node.batch_size}): it splits a batch (null: no split)")
        if stage in trained and micro is not None:
            manual.append(f"{stage}.micro_batch_size={micro}")
        if stage in trained and node.get("max_grad_norm") is not None:
            own_clip.append(f"{stage}.max_grad_norm={node.max_grad_norm}")
    if manual and deepspeed:
        problems.append(f"trainer.strategy={strategy} is not run with micro-batches ({', '.join(manual)}): "
                        "leave them null")
    if own_clip and deepspeed:
        problems.append(f"trainer.strategy={strategy} clips inside its engine, with trainer.gradient_clip_val "
                        f"only: use that instead of {', '.join(own_clip)}")
    elif own_clip and clip not in (None, 0):
        problems.append(f"trainer.gradient_clip_val={clip} and {', '.join(own_clip)} would both clip: keep one")
    if "ppo" in trained:
        manual.append("the RL stage")
    if "ppo" in trained and deepspeed:
        problems.append(f"trainer.strategy={strategy} takes one optimizer, but PPO trains two (actor and critic): "
                        "run stage=sft, rm or dpo with it and PPO with trainer=ddp")
    if manual and fsdp_strategy(strategy):
        # a manual stage's backward passes run inside its training step, itself inside the FSDP root's
        # forward, where FSDP refuses them (its root unit holds the trainable embeddings and heads)
        problems.append(f"trainer=fsdp cannot train {', '.join(manual)}: its backward passes would run inside "
                        "FSDP's forward, which FSDP refuses. Train SFT, RM and DPO under it without micro-batches "
                        "(stage=sft, then stage=rm, then stage=dpo), then the rest with trainer=gpu or ddp in the "
                        "same run folder (hydra.run.dir)")
    accumulate = OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=None)
    for flag, value, used in (("gradient_clip_val", clip, clip not in (None, 0)),
                              ("accumulate_grad_batches", accumulate, accumulate not in (None, 1))):
        if used and manual:
            problems.append(f"trainer.{flag}={value} does not apply under manual optimisation "
                            f"({', '.join(manual)}): remove it (the RL stage clips with ppo.max_grad_norm, SFT, RM "
                            "and DPO with <stage>.max_grad_norm; micro-batches accumulate a batch's gradients)")
    return problems
