"""The PPO update starts where the rollout left it: at the first minibatch pi_theta / pi_old is 1 and
the critic's new values equal the old ones, off the defaults too (sampling temperature, bf16 weights,
bf16-mixed autocast, LoRA dropout, a from-config model with dropout in train mode)."""

from __future__ import annotations

import contextlib

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.utils.data import DataLoader

from rto.context import stage_speedups as speedups
from rto.data import PromptCollator, load_data
from rto.main import train
from rto.data.collate import Encoder
from rto.models.factory import build_policy, load_policy, load_tokenizer
from rto.models.lora import add_lora
from rto.models.retokenize import RewardScorer
from rto.models.scalar_head import ScalarHeadModel
from rto.rl.first_minibatch import record_first_minibatch
from rto.stages import PPOModule
from tests.conftest import compose_config
from tests.real_assets import save_tiny_llama

TOLERANCE = 1e-5



@pytest.fixture
def first_minibatch(monkeypatch):
    """Records the first PPO minibatch's `|pi/pi_old - 1|` and `|V - V_old|` (max over real tokens)."""
    return record_first_minibatch(monkeypatch.setattr)


def run_ppo_stage(ckpt, out, *overrides):
    train(compose_config("stage=ppo", "ppo.iterations=1", "ppo.ppo_epochs=1", f"sft.checkpoint={ckpt / 'sft'}",
                         f"rm.checkpoint={ckpt / 'rm'}", f"dpo.checkpoint={ckpt / 'dpo'}", *overrides,
                         output_dir=out))


@pytest.mark.parametrize("overrides", [
    ("ppo.temperature=0.7",),
    ("model.dtype=bf16",),
    ("trainer.precision=bf16-mixed",),
    ("model.dtype=bf16", "ppo.temperature=0.7", "reward=sentence"),
], ids=["temperature", "bf16-weights", "bf16-mixed", "bf16-tempered-sentence"])
def test_first_minibatch_ratio_and_values_start_at_the_rollout(upstream, tmp_path, first_minibatch, overrides):
    run_ppo_stage(upstream, tmp_path, *overrides)
    assert first_minibatch["ratio"] <= TOLERANCE
    assert first_minibatch["values"] <= TOLERANCE


COLOR_PROMPTS = ["what color is the sky ?", "what color is the sea ?", "what color is the leaf ?",
                 "what color is the milk ?"] * 2  # a rollout's worth for the tiny chat models


def fit_one_iteration(cfg, actor, reference, critic, reward_model, tokenizer, prompts, encoder, callbacks=(),
                      stage_speedups=False):
    """The real PPOModule for one iteration under the configured Lightning trainer; with
    `stage_speedups`, under what a run's stages train under (`rto.context.stage_speedups`)."""
    ppo = cfg.ppo
    module = PPOModule(actor, critic, reference, RewardScorer(reward_model, encoder, tokenizer), reference,
                       ppo_cfg=ppo, reward_cfg=cfg.reward, beta=cfg.beta,
                       actor_optimizer=instantiate(ppo.actor_optimizer),
                       critic_optimizer=instantiate(ppo.critic_optimizer), eos_id=tokenizer.eos_token_id,
                       pad_id=tokenizer.pad_token_id, decode=None, gold=None, seed=cfg.seed)
    loader = DataLoader(prompts[:ppo.rollout_batch_size], batch_size=ppo.rollout_batch_size,
                        collate_fn=PromptCollator(encoder))
    trainer = instantiate(cfg.trainer, logger=False, max_epochs=1, max_steps=1, callbacks=list(callbacks))
    with speedups(cfg, module) if stage_speedups else contextlib.nullcontext():
        trainer.fit(module, loader)


def test_lora_actor_with_dropout_samples_and_updates_with_dropout_off(tmp_path, first_minibatch):
    """A LoRA adapter loaded trainable (peft puts it in train mode), LoRA dropout 0.05, as
    conf/model/llama3-8b.yaml ships."""
    base = save_tiny_llama(tmp_path / "base")
    cfg = compose_config("model=hf", f"model.pretrained={base}",
                         "model.lora={r: 4, alpha: 8, dropout: 0.05, target_modules: all-linear}",
                         "ppo.ppo_epochs=1", output_dir=tmp_path)
    lora = add_lora(load_policy(base, cfg.model), cfg.model.lora)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: B != 0, so LoRA dropout changes the outputs
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    lora.save_pretrained(tmp_path / "adapter")
    actor = load_policy(tmp_path / "adapter", cfg.model)
    assert actor.training  # how peft hands it over: the RL loop must not inherit that
    tokenizer = load_tokenizer(cfg.model)
    encoder = Encoder(tokenizer, 32, 8, append_eos=True, chat_template=True)
    reference = load_policy(base, cfg.model, trainable=False)
    critic = ScalarHeadModel.from_causal_lm(reference)
    fit_one_iteration(cfg, actor, reference, critic, ScalarHeadModel.from_causal_lm(reference), tokenizer,
                      COLOR_PROMPTS, encoder)
    assert first_minibatch["ratio"] <= TOLERANCE


def test_from_config_model_with_dropout_in_train_mode(make_cfg, first_minibatch):
    """GPT-2 from config (dropout 0.1 in its config), handed over in train mode as `from_config` builds it."""
    cfg = make_cfg("ppo.ppo_epochs=1")
    with open_dict(cfg):
        cfg.model.arch = "gpt2"
    data = load_data(cfg.data)
    L.seed_everything(0, verbose=False)
    actor = build_policy(cfg.model, data.tokenizer)
    assert actor.training and actor.config.resid_pdrop > 0
    reference = build_policy(cfg.model, data.tokenizer)
    reference.load_state_dict(actor.state_dict())
    critic = ScalarHeadModel.from_causal_lm(reference).train()
    fit_one_iteration(cfg, actor, reference, critic, ScalarHeadModel.from_causal_lm(reference), data.tokenizer,
                      data.train_prompts, data.encoder)
    assert first_minibatch["ratio"] <= TOLERANCE
    assert first_minibatch["values"] <= TOLERANCE


def test_gradient_checkpointing_still_runs_with_dropout_off(make_cfg):
    """The update's mode keeps a checkpointed layer's own flag on (transformers checkpoints only in
    training mode) and every dropout module off."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from rto.rl.modes import inference_mode, update_mode

    cfg = make_cfg("model.gradient_checkpointing=true")
    with open_dict(cfg):
        cfg.model.arch = "gpt2"
    data = load_data(cfg.data)
    model = build_policy(cfg.model, data.tokenizer)
    update_mode(model)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(m.training for m in layers)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and not any(m.training for m in dropouts)
    inference_mode(model)
    assert not any(m.training for m in model.modules())
    update_mode(model, dropout=True)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("overrides", [(), ("model.dtype=bf16",)], ids=["fp32", "bf16-weights"])
def test_shared_prompt_prefix_keeps_the_first_minibatch_exact(upstream, tmp_path, first_minibatch, monkeypatch,
                                                              overrides):
    """The tiny task's prompts share 3 tokens (BOS, "write about"): with `ppo.shared_prefix_min_tokens=2`
    every forward of the iteration runs them once, all with the rollout's prefix length, so pi_old
    (recomputed with bf16 weights) and the first minibatch's pi still agree, as do old and new values."""
    from rto.models import forward

    lengths = []
    split = forward.split_prefix
    monkeypatch.setattr(forward, "split_prefix", lambda *args: lengths.append(args[2]) or split(*args))
    run_ppo_stage(upstream, tmp_path, "ppo.shared_prefix_min_tokens=2", *overrides)
    assert len(lengths) >= 6 and set(lengths) == {3}  # sampler, frozen forwards, critic, update: all shared
    assert first_minibatch["ratio"] <= TOLERANCE
    assert first_minibatch["values"] <= TOLERANCE


def test_no_shared_prefix_under_cpu_bf16_autocast(upstream, tmp_path, monkeypatch):
    """Under bf16-mixed on a CPU the prefix is not shared (measured slower there): every forward is plain."""
    from rto.models import forward

    lengths = []
    split = forward.split_prefix
    monkeypatch.setattr(forward, "split_prefix", lambda *args: lengths.append(args[2]) or split(*args))
    run_ppo_stage(upstream, tmp_path, "ppo.shared_prefix_min_tokens=2", "trainer.precision=bf16-mixed")
    assert lengths == []
