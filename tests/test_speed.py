"""The speed-ups every stage gets keep the numbers: fused GELU, and `compile=true` end to end."""

from __future__ import annotations

import pytest

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers.activations import NewGELUActivation

from rto.data import SFTCollator, load_data
from rto.main import train
from rto.models.factory import build_policy
from rto.models.forward import policy_logprobs
from rto.models.speed import compiled, fused_activations, transformers_models
from rto.stages import SFTModule
from tests.csv_log import logged


def _gpt2(cfg, tokenizer):
    torch.manual_seed(0)
    return build_policy(OmegaConf.create({**OmegaConf.to_container(cfg.model), "arch": "gpt2"}), tokenizer)


def test_fused_gelu_gives_the_same_logprobs_and_gradients(make_cfg):
    cfg = make_cfg()
    data = load_data(cfg.data)
    batch = SFTCollator(data.encoder)(data.sft_rows[:6])
    model = _gpt2(cfg, data.tokenizer).eval()
    before, _ = policy_logprobs(model, batch)
    before.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert fused_activations(model) == cfg.model.num_layers
    assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
    after, _ = policy_logprobs(model, batch)
    after.sum().backward()
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)
    assert model.config.activation_function == "gelu_new"  # saved folders stay standard GPT-2


def test_compiled_models_go_back_to_eager_after_the_stage(make_cfg):
    cfg = make_cfg()
    data = load_data(cfg.data)
    module = SFTModule(_gpt2(cfg, data.tokenizer), torch.optim.AdamW)
    models = transformers_models(module)
    assert models == [module.policy]
    with compiled(module, enabled=True):
        assert module.policy._compiled_call_impl is not None
    assert module.policy._compiled_call_impl is None  # a deep copy made later runs its own weights
    with compiled(module, enabled=False):
        assert module.policy._compiled_call_impl is None


@pytest.mark.slow  # compiling takes about a minute: kept out of the default suite's 15 minutes
def test_compile_true_trains_sft_like_eager(make_cfg, tmp_path):
    """The real entry point with `compile=true` (SFT at tiny size): same loss as eager, same saved keys."""
    runs = {}
    for flag in ("false", "true"):
        cfg = make_cfg("stage=sft", f"compile={flag}", "logger=csv", output_dir=tmp_path / flag)
        train(cfg)
        runs[flag] = tmp_path / flag
    losses = {flag: logged(folder, "sft/loss") for flag, folder in runs.items()}
    assert losses["true"] and len(losses["true"]) == len(losses["false"])
    torch.testing.assert_close(torch.tensor(losses["true"]), torch.tensor(losses["false"]), atol=1e-3, rtol=1e-3)
    state = {flag: load_file(str(folder / "checkpoints" / "sft" / "model.safetensors")) for flag, folder in runs.items()}
    assert state["true"].keys() == state["false"].keys()  # compiled in place: no `_orig_mod.` prefixes


@pytest.mark.slow  # compiling the policy, reference and reward model: minutes on 2 cores
def test_compile_true_runs_grpo_like_eager(upstream, tmp_path):
    """The critic-free loop with `compile=true` (GRPO, k=2, sampling included): the same rollouts and losses
    as eager within float tolerance (what `vs_trl.py --ours compile=true` times)."""
    from tests.conftest import compose_config

    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        train(compose_config("stage=ppo", "ppo.iterations=3", "algo=grpo", "algo.samples_per_prompt=2",
                             f"sft.checkpoint={upstream / 'sft'}", f"rm.checkpoint={upstream / 'rm'}",
                             f"dpo.checkpoint={upstream / 'dpo'}", f"compile={flag}", "logger=csv", output_dir=out))
        runs[flag] = out
    for key in ("ppo/score", "ppo/response_length", "ppo/kl_k1", "ppo/policy_loss"):
        values = {flag: logged(folder, key) for flag, folder in runs.items()}
        assert len(values["true"]) == len(values["false"]) == 3, key
        torch.testing.assert_close(torch.tensor(values["true"]), torch.tensor(values["false"]), atol=1e-3, rtol=1e-3,
                                   msg=key)
