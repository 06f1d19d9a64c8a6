"""Our side of `vs_trl.py`: the real `PPOModule` / `DPOModule` under a Lightning Trainer.

    python benchmarks/ours_worker.py ppo_sentence|ppo_token|dpo SPEC.json [HYDRA OVERRIDES]   (driven by vs_trl.py)

Config comes from the project's own `conf/` (hydra.compose), so the defaults measured are the
defaults users run; only the shapes are set to the benchmark's.
"""

from __future__ import annotations

import json
import sys
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

from rto.data.collate import Encoder, PairCollator, PromptCollator  # noqa: E402
from rto.models import ScalarHeadModel, load_policy  # noqa: E402
from rto.models.speed import fast_stage  # noqa: E402
from rto.models.retokenize import RewardScorer  # noqa: E402
from rto.stages import DPOModule, PPOModule  # noqa: E402
from rto.stages.dpo import with_reference_logps  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class Tick(L.Callback):
    def __init__(self, clock: StepClock):
        self.clock = clock

    def on_train_batch_end(self, *args, **kwargs):
        self.clock.tick()


def compose_cfg(work: str, spec: dict, extra: list[str]):
    overrides = [f"reward={'token' if work == 'ppo_token' else 'sentence'}", "logger=none",
                 f"threads={spec['threads']}",
                 f"ppo.rollout_batch_size={spec['rollout_batch_size']}", f"ppo.minibatch_size={spec['minibatch_size']}",
                 f"ppo.ppo_epochs={spec['ppo_epochs']}", f"ppo.max_new_tokens={spec['max_new_tokens']}",
                 f"dpo.batch_size={spec['dpo_pairs']}", *extra]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def scalar_model(folder: str) -> ScalarHeadModel:
    return ScalarHeadModel(AutoModel.from_pretrained(folder))


def main() -> None:
    work, spec = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    cfg = compose_cfg(work, spec, sys.argv[3:])
    torch.set_num_threads(spec["threads"])
    L.seed_everything(spec["seed"], verbose=False)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    encoder = Encoder(tok, max_prompt_tokens=32, max_response_tokens=spec["max_new_tokens"], append_eos=True)
    steps = spec["total_steps"]
    clock = StepClock()
    if work == "dpo":
        pairs = json.loads(Path(spec["pairs"]).read_text())
        reference = load_policy(spec["model"])
        if cfg.dpo.precompute_ref:  # once per dataset, before training: not part of a step (as in TRL)
            pairs = with_reference_logps(reference, pairs, PairCollator(encoder), spec["dpo_pairs"],
                                         cfg.dpo.share_prompt)
        module = DPOModule(load_policy(spec["model"]), reference, cfg.dpo.beta, instantiate(cfg.dpo.optimizer),
                           share_prompt=cfg.dpo.share_prompt)
        sampler = RandomSampler(pairs, replacement=True, num_samples=steps * spec["dpo_pairs"])
        loader = DataLoader(pairs, batch_size=spec["dpo_pairs"], sampler=sampler, collate_fn=PairCollator(encoder))
    else:
        prompts = json.loads(Path(spec["prompts"]).read_text())
        pc = cfg.ppo
        module = PPOModule(
            load_policy(spec["model"]), scalar_model(spec["model"]), load_policy(spec["model"]),
            RewardScorer(scalar_model(spec["model"]), encoder, tok),
            load_policy(spec["model"]) if work == "ppo_token" else None,
            ppo_cfg=pc, reward_cfg=cfg.reward, beta=cfg.beta, actor_optimizer=instantiate(pc.actor_optimizer),
            critic_optimizer=instantiate(pc.critic_optimizer), eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
            decode=None, gold=None)
        sampler = RandomSampler(prompts, replacement=True, num_samples=steps * spec["rollout_batch_size"])
        loader = DataLoader(prompts, batch_size=spec["rollout_batch_size"], sampler=sampler,
                            collate_fn=PromptCollator(encoder), drop_last=True)
    trainer = instantiate(cfg.trainer, logger=False, max_epochs=1, callbacks=[Tick(clock)])
    print("@@READY", flush=True)
    clock.wait_for_command()
    with fast_stage(module, cfg.compile):  # `--ours compile=true`; the warm-up chunk pays for compiling
        trainer.fit(module, loader)


if __name__ == "__main__":
    main()
