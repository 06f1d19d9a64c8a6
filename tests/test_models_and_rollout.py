"""Masks, not ids, decide positions: left-padded prompts, pad == eos, responses without EOS."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rto.models import ScalarHeadModel, policy_logprobs, sequence_inputs
from rto.algos.finite import NonFiniteError
from rto.rl import rollout as rollout_module
from rto.rl.rollout import draw_tokens, mask_after_eos, sample_responses

PAD = EOS = 2  # the hard case: pad and eos share an id


def tiny_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=11, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


def test_mask_after_eos_keeps_first_eos_and_handles_no_eos():
    ids = torch.tensor([[5, 2, 2, 2],    # eos at 1, then padding that is also eos
                        [5, 6, 7, 8],    # no eos: truncated response, all real
                        [2, 2, 2, 2]])   # eos first
    assert mask_after_eos(ids, EOS).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_left_padding_does_not_change_logprobs_or_scores():
    lm = tiny_lm()
    rm = ScalarHeadModel.from_causal_lm(lm).eval()
    prompt, response = [1, 4, 5], [6, 7, EOS]
    alone = {"prompt_ids": torch.tensor([prompt]), "prompt_mask": torch.ones(1, 3, dtype=torch.long),
             "response_ids": torch.tensor([response + [PAD]]), "response_mask": torch.tensor([[1, 1, 1, 0]])}
    # the same row left-padded by two pads that equal eos, next to a longer prompt
    padded = {"prompt_ids": torch.tensor([[PAD, PAD] + prompt, [1, 4, 5, 6, 7]]),
              "prompt_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),
              "response_ids": torch.tensor([response + [PAD], [8, 9, 3, 4]]),
              "response_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    with torch.no_grad():
        lp_alone, _ = policy_logprobs(lm, alone)
        lp_padded, _ = policy_logprobs(lm, padded)
        torch.testing.assert_close(lp_padded[0], lp_alone[0], atol=1e-5, rtol=1e-5)
        assert lp_padded[0, 3] == 0  # masked slot
        torch.testing.assert_close(rm.score(**padded)[0], rm.score(**alone)[0], atol=1e-5, rtol=1e-5)
        # the score is read at the last real token (index 2 of the response), not at the padded end
        values = rm.response_values(**alone)
        full = rm(**sequence_inputs(alone["prompt_ids"], alone["prompt_mask"], alone["response_ids"],
                                    alone["response_mask"]))
        torch.testing.assert_close(rm.score(**alone)[0], full[0, 3 + 2])
        assert values.shape == (1, 4)


def test_sampling_is_reproducible_and_matches_policy_logprobs():
    lm = tiny_lm(1)
    prompt_ids = torch.tensor([[PAD, 1, 4], [1, 5, 6]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    a = sample_responses(lm, prompt_ids, prompt_mask, 6, EOS, PAD, generator=torch.Generator().manual_seed(3),
                         return_logprobs=True)
    b = sample_responses(lm, prompt_ids, prompt_mask, 6, EOS, PAD, generator=torch.Generator().manual_seed(3),
                         return_logprobs=True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ids, mask, sampled = a
    assert ids.shape[1] <= 6 and mask.sum() > 2
    # the KV-cache loop's log-probs are those of one full forward over prompt + response, token for token
    batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": ids, "response_mask": mask}
    with torch.no_grad():
        logprobs, _ = policy_logprobs(lm, batch)
    torch.testing.assert_close(sampled, logprobs, atol=1e-6, rtol=1e-6)
    assert (sampled[mask == 0] == 0).all() and (sampled[mask.bool()] < 0).all()


def test_draw_tokens_follows_the_distribution_and_never_draws_a_zero_probability_token():
    probs = torch.tensor([0.0, 0.1, 0.0, 0.2, 0.7, 0.0])
    logprobs = probs.log().expand(200_000, -1)
    tokens, total = draw_tokens(logprobs, torch.Generator().manual_seed(0))
    share = torch.bincount(tokens, minlength=6).double() / tokens.numel()
    torch.testing.assert_close(share, probs.double(), atol=4e-3, rtol=0)  # s.e. of the 0.7 share: 1e-3
    assert share[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(total, torch.ones(200_000, dtype=torch.float64))


@pytest.mark.parametrize("u, expected", [(0.0, 1), (1.0 - 2.0 ** -53, 4)])
def test_draw_tokens_at_the_ends_of_the_uniform_lands_on_tokens_with_probability(monkeypatch, u, expected):
    """u = 0 draws the first token of nonzero probability, not the zero-probability one before it; the
    largest u below 1 the last one, not the zero-probability token after it."""
    monkeypatch.setattr(rollout_module.torch, "rand", lambda shape, generator=None, **kw: torch.full(shape, u, **kw))
    logprobs = torch.tensor([[0.0, 0.1, 0.0, 0.2, 0.7, 0.0]]).log()
    assert draw_tokens(logprobs)[0].tolist() == [expected]


def test_nan_logits_stop_sampling_with_a_named_error():
    lm = tiny_lm(1)
    prompt_ids, prompt_mask = torch.tensor([[1, 4], [1, 5]]), torch.ones(2, 2, dtype=torch.long)
    with pytest.raises(NonFiniteError, match="sampling distribution is not finite: 6 of 6 "):
        sample_responses(lm, prompt_ids, prompt_mask, 3, EOS, PAD, temperature=float("nan"))


def test_kv_cache_sampling_matches_full_forward_distribution():
    """Greedy decoding (temperature -> 0) through the cache equals argmax of full forwards."""
    lm = tiny_lm(2)
    prompt_ids, prompt_mask = torch.tensor([[PAD, PAD, 1, 4]]), torch.tensor([[0, 0, 1, 1]])
    ids, mask = sample_responses(lm, prompt_ids, prompt_mask, 5, eos_id=99, pad_id=PAD, temperature=1e-4)
    seq = [1, 4]
    with torch.no_grad():
        for _ in range(5):
            logits = lm(input_ids=torch.tensor([seq])).logits[0, -1]
            seq.append(int(logits.argmax()))
    assert ids[0].tolist() == seq[2:]


def test_lora_wrapped_policy_samples_through_the_current_cache_keyword():
    """A peft wrapper's forward takes **kwargs; the sampler must still pass the model's own cache keyword
    (not the deprecated `past_key_values`) and sample exactly what the unwrapped model samples."""
    import inspect
    import warnings

    from peft import LoraConfig, get_peft_model

    from rto.models.forward import cache_keyword

    lm = tiny_lm(3)
    expected = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    wrapped = get_peft_model(tiny_lm(3), LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.0))
    assert cache_keyword(wrapped) == expected
    prompt_ids, prompt_mask = torch.tensor([[PAD, 1, 4]]), torch.tensor([[0, 1, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        got = sample_responses(wrapped, prompt_ids, prompt_mask, 4, EOS, PAD, generator=torch.Generator().manual_seed(0))
    plain = sample_responses(lm, prompt_ids, prompt_mask, 4, EOS, PAD, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got[0], plain[0])  # LoRA's B starts at zero: same model, same samples
