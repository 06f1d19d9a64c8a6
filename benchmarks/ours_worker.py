"""Our side of `vs_trl.py` and `learners.py`: the real RL learner module (`LEARNERS`) or `DPOModule`
under a Lightning Trainer.

    python benchmarks/ours_worker.py WORK SPEC.json [HYDRA OVERRIDES]   (driven by vs_trl.py, learners.py)

WORK: `dpo`; `rl` (the learner and reward the overrides name, e.g. `algo=grpo reward=sentence`);
`ppo_sentence`, `ppo_token`; `grpo`, `rloo` (sentence reward, `group_size` samples per prompt, one pass
over the rollout as one minibatch: TRL's GRPOTrainer / RLOOTrainer work at num_iterations=1);
`ppo_smollm2` (a `smollm2_spec.py` spec: PPO with the sentence reward on SmolLM2-135M-Instruct with
`experiment=sentiment_smollm2`'s LoRA, the models built as the pipeline's RL stage holds them, every
response forced to `max_new_tokens`).

Config comes from the project's own `conf/` (hydra.compose), so the defaults measured are the
defaults users run; only the shapes are set to the benchmark's.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader, RandomSampler
from transformers import AutoModel, AutoTokenizer

# this checkout's rto first (a venv may hold another checkout's editable install)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from step_clock import StepClock  # noqa: E402

import rto.config  # noqa: E402,F401  (registers `${package_dir:...}`, which the GGUF preset uses)
from rto.data.collate import Encoder, PairCollator, PromptCollator  # noqa: E402
from rto.algos.kl_control import KLController  # noqa: E402
from rto.models import ScalarHeadModel, load_policy  # noqa: E402
from rto.context import stage_speedups  # noqa: E402
from rto.models.retokenize import RewardScorer  # noqa: E402
from rto.recipes.rl import LEARNERS  # noqa: E402
from rto.stages import CriticFreeModule, DPOModule, PPOModule  # noqa: E402
from rto.stages.dpo import with_reference_logps  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class Tick(L.Callback):
    def __init__(self, clock: StepClock):
        self.clock = clock

    def on_train_batch_end(self, *args, **kwargs):
        self.clock.tick()


# work -> its learner's overrides (besides the spec's shapes)
WORKS = {"ppo_sentence": ["reward=sentence"], "ppo_token": ["reward=token"], "dpo": [], "rl": [],
         "grpo": ["algo=grpo", "reward=sentence"], "rloo": ["algo=rloo", "reward=sentence"],
         "ppo_smollm2": ["experiment=sentiment_smollm2", "reward=sentence"]}


def compose_cfg(work: str, spec: dict, extra: list[str]):
    group = [f"algo.samples_per_prompt={spec['group_size']}", "ppo.ppo_epochs=1",
             f"ppo.minibatch_size={spec['rollout_batch_size']}"] if work in ("grpo", "rloo") else []
    dpo = [f"dpo.batch_size={spec['dpo_pairs']}"] if "dpo_pairs" in spec else []
    overrides = [*WORKS[work], *spec.get("overrides", []), "logger=none",
                 f"threads={spec['threads']}",
                 f"ppo.rollout_batch_size={spec['rollout_batch_size']}", f"ppo.minibatch_size={spec['minibatch_size']}",
                 f"ppo.ppo_epochs={spec['ppo_epochs']}", f"ppo.max_new_tokens={spec['max_new_tokens']}",
                 *dpo, *group, *extra]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def scalar_model(folder: str) -> ScalarHeadModel:
    return ScalarHeadModel(AutoModel.from_pretrained(folder))


def rl_module(cfg, spec: dict, tok, encoder):
    """The learner `algo=` names, as the RL recipe builds it (rto/recipes/rl.py), on the spec's models."""
    pc, algo = cfg.ppo, cfg.algo
    shared = dict(reference=load_policy(spec["model"]),
                  reward_model=RewardScorer(scalar_model(spec["model"]), encoder, tok),
                  dpo_policy=load_policy(spec["model"]) if cfg.reward.name != "sentence" else None,
                  ppo_cfg=pc, reward_cfg=cfg.reward, beta=cfg.beta,
                  kl_ctl=KLController(cfg.beta, cfg.kl_ctl.name, cfg.kl_ctl.get("target"), cfg.kl_ctl.get("horizon")),
                  samples_per_prompt=algo.samples_per_prompt, kl_in_reward=algo.kl_in == "reward",
                  eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, decode=None, gold=None)
    actor, actor_optimizer = load_policy(spec["model"]), instantiate(pc.actor_optimizer)
    if LEARNERS[algo.name].uses_critic:
        return PPOModule(actor, scalar_model(spec["model"]), actor_optimizer=actor_optimizer,
                         critic_optimizer=instantiate(pc.critic_optimizer), **shared)
    return CriticFreeModule(actor, baseline=LEARNERS[algo.name].baseline(algo), whiten=algo.whiten_advantages,
                            actor_optimizer=actor_optimizer, **shared)


def smollm2_work(cfg, spec: dict, steps: int):
    """(module, loader) of `ppo_smollm2`: the RL stage's models on the GGUF model (`iteration_worker.build_module`:
    the SFT policy with LoRA is the reference, the reward model on its backbone, the critic from the reward
    model with LoRA, the actor from the SFT adapter) and the spec's prompts, the same batch every iteration."""
    from iteration_worker import build_module
    from smollm2_spec import MAX_PROMPT_TOKENS

    from rto.models.factory import load_tokenizer
    from rto.tasks.sentiment import chat_encoder

    tok = load_tokenizer(cfg.model)
    encoder = chat_encoder(tok, MAX_PROMPT_TOKENS, spec["max_new_tokens"])
    with tempfile.TemporaryDirectory() as tmp:  # every model is in memory once built
        module = build_module(cfg, {"full_length": True}, tok, encoder, Path(tmp))  # no EOS: all rows run full length
    prompts = json.loads(Path(spec["prompts"]).read_text())
    ids = [encoder.prompt(p) for p in prompts]
    if ids != json.loads(Path(spec["prompt_ids"]).read_text()):
        raise RuntimeError("our encoder gives other prompt ids than the spec's (which TRL's side reads)")
    loader = DataLoader(prompts * steps, batch_size=spec["rollout_batch_size"], shuffle=False,
                        collate_fn=PromptCollator(encoder), drop_last=True)
    return module, loader


def gpt2_work(work: str, cfg, spec: dict, steps: int):
    """(module, loader) of the works on `shapes.py`'s GPT-2 files."""
    tok = AutoTokenizer.from_pretrained(spec["model"])
    encoder = Encoder(tok, max_prompt_tokens=32, max_response_tokens=spec["max_new_tokens"], append_eos=True)
    if work == "dpo":
        pairs = json.loads(Path(spec["pairs"]).read_text())
        reference = load_policy(spec["model"])
        if cfg.dpo.precompute_ref:  # once per dataset, before training: not part of a step (as in TRL)
            pairs = with_reference_logps(reference, pairs, PairCollator(encoder), spec["dpo_pairs"],
                                         cfg.dpo.share_prompt)
        # as the DPO recipe: with the log-probs precomputed the module holds no reference
        module = DPOModule(load_policy(spec["model"]), None if cfg.dpo.precompute_ref else reference, cfg.dpo.beta,
                           instantiate(cfg.dpo.optimizer), share_prompt=cfg.dpo.share_prompt)
        sampler = RandomSampler(pairs, replacement=True, num_samples=steps * spec["dpo_pairs"])
        return module, DataLoader(pairs, batch_size=spec["dpo_pairs"], sampler=sampler,
                                  collate_fn=PairCollator(encoder))
    prompts = json.loads(Path(spec["prompts"]).read_text())
    module = rl_module(cfg, spec, tok, encoder)
    per_step = spec["rollout_batch_size"] // cfg.algo.samples_per_prompt  # prompts, each sampled k times
    sampler = RandomSampler(prompts, replacement=True, num_samples=steps * per_step)
    return module, DataLoader(prompts, batch_size=per_step, sampler=sampler, collate_fn=PromptCollator(encoder),
                              drop_last=True)


def main() -> None:
    work, spec = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    cfg = compose_cfg(work, spec, sys.argv[3:])
    torch.set_num_threads(spec["threads"])
    L.seed_everything(spec["seed"], verbose=False)
    steps = spec["total_steps"]
    clock = StepClock()
    if work == "ppo_smollm2":
        module, loader = smollm2_work(cfg, spec, steps)
    else:
        module, loader = gpt2_work(work, cfg, spec, steps)
    trainer = instantiate(cfg.trainer, logger=False, max_epochs=1, callbacks=[Tick(clock)])
    print("@@READY", flush=True)
    clock.wait_for_command()
    # as a run's stages: `--ours compile=true` (the warm-up chunk pays for compiling) and, under bf16-mixed
    # on a CPU, the frozen weights stored in bf16 (before 2026-11-27 this worker left them fp32)
    with stage_speedups(cfg, module):
        trainer.fit(module, loader)


if __name__ == "__main__":
    main()
