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
def test_sampling_logprobs_equal_a_forward_over_prompt_and_response(make_cfg, arch):
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
    expected, _ = policy_logprobs(model, {**batch, "response_ids": ids, "response_mask": mask})
    assert logprobs.shape == ids.shape
    torch.testing.assert_close(logprobs, expected, atol=1e-4, rtol=1e-4)
    assert (logprobs[mask == 0] == 0).all()


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
