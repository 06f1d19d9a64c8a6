"""The sampler's own log-probs (which spare PPO a forward) and GPT-2 presets in the model factory."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from rto.data import load_data
from rto.data.collate import encode_prompts
from rto.models.factory import build_policy
from rto.models.forward import policy_logprobs
from rto.rl.rollout import sample_responses


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sampling_logprobs_equal_a_tempered_forward_over_prompt_and_response(make_cfg, arch):
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.model.arch = arch
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_policy(cfg.model, data.tokenizer).eval()
    # prompts of different lengths: left padding must not shift anything
    batch = encode_prompts(data.encoder, [r for r in data.train_prompts[:6]] + ["write :"])
    tok = data.tokenizer
    ids, mask, logprobs = sample_responses(model, batch["prompt_ids"], batch["prompt_mask"], 8, tok.eos_token_id,
                                           tok.pad_token_id, temperature=0.7, return_logprobs=True,
                                           generator=torch.Generator().manual_seed(0))
    batch = {**batch, "response_ids": ids, "response_mask": mask}
    expected, _ = policy_logprobs(model, batch, temperature=0.7)
    assert logprobs.shape == ids.shape
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=1e-5)
    assert (logprobs[mask == 0] == 0).all()
    untempered, _ = policy_logprobs(model, batch)  # a different distribution: not what was sampled
    assert (logprobs - untempered)[mask.bool()].abs().max() > 1e-2


def test_recorded_logprob_is_the_probability_the_token_was_drawn_with():
    """At T=0.7, the frequency of each first token over many draws matches exp(recorded log-prob)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0,
                                         eos_token_id=1)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # a peaked distribution: temperature changes it a lot
    n = 20000
    prompt_ids, prompt_mask = torch.tensor([[2, 3]]).repeat(n, 1), torch.ones(n, 2, dtype=torch.long)
    ids, _, logprobs = sample_responses(model, prompt_ids, prompt_mask, 1, eos_id=1, pad_id=0, temperature=0.7,
                                        return_logprobs=True, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(ids[:, 0], minlength=8).double() / n
    probs = torch.zeros(8, dtype=torch.double).scatter(0, ids[:, 0], logprobs[:, 0].double().exp())
    assert (counts - probs).abs().max() < 0.02  # binomial s.e. <= 0.0036 at n = 20000
    untempered = torch.softmax(model(input_ids=prompt_ids[:1]).logits[0, -1].double(), -1)
    assert (counts - untempered).abs().max() > 0.05  # the untempered policy would not explain the draws


def test_gpt2_preset_gets_the_requested_shape_and_overrides(make_cfg):
    cfg = make_cfg()
    data = load_data(cfg.data)
    model_cfg = OmegaConf.merge(OmegaConf.to_container(cfg.model), {"arch": "gpt2", "hidden_size": 48, "num_layers": 3, "num_heads": 4,
                                            "intermediate_size": 96, "config_overrides": {"resid_pdrop": 0.0}})
    config = build_policy(model_cfg, data.tokenizer).config
    assert (config.n_embd, config.n_layer, config.n_head, config.n_inner) == (48, 3, 4, 96)
    assert config.resid_pdrop == 0.0
    with pytest.raises(ValueError, match="config_overrides.not_a_field"):
        build_policy(OmegaConf.merge(model_cfg, {"config_overrides": {"not_a_field": 1}}), data.tokenizer)
