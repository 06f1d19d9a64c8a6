"""Pair batches run each prompt once (`share_prompt`): the same log-probs, scores and gradients
as the plain forward over prompt + response, for Llama and GPT-2, with left-padded prompts of
different lengths and responses of different lengths (an empty one included)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from rto.data import PairCollator, load_data
from rto.data.collate import Encoder
from rto.models.factory import build_policy
from rto.models.forward import holds_pairs, policy_logprobs, shared_prompt_forward
from rto.models.scalar_head import ScalarHeadModel
from rto.stages.dpo import sequence_logps

ROWS = [  # prompts of 2 to 8 words; one rejected response is empty
    {"prompt": "a b", "chosen": "c d e f", "rejected": "g"},
    {"prompt": "a b c d e f g h", "chosen": "i", "rejected": "j k l m n o"},
    {"prompt": "h g f e", "chosen": "d c b", "rejected": ""},
]


def _model_cfg(base, arch: str):
    if arch == "llama":
        return base
    return OmegaConf.create({**OmegaConf.to_container(base), "arch": "gpt2", "config_overrides": {
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0}})


@pytest.fixture(params=["llama", "gpt2"])
def setup(request, make_cfg):
    cfg = make_cfg()
    data = load_data(cfg.data)
    torch.manual_seed(0)
    policy = build_policy(_model_cfg(cfg.model, request.param), data.tokenizer)
    encoder = Encoder(data.tokenizer, max_prompt_tokens=16, max_response_tokens=8)
    batch = PairCollator(encoder)(ROWS)
    assert holds_pairs(batch) and batch["response_mask"].sum(1).min() == 0  # the empty response is there
    return policy, batch


def _grads(model) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    return grads


def test_shared_prompt_logprobs_and_gradients_equal_the_plain_forward(setup):
    policy, batch = setup
    plain = sequence_logps(policy, batch)
    plain.sum().backward()
    plain_grads = _grads(policy)
    shared = sequence_logps(policy, batch, share_prompt=True)
    shared.sum().backward()
    shared_grads = _grads(policy)
    assert shared_prompt_forward(policy, batch) is not None  # the shared path really ran
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    assert len(shared_grads) == len(plain_grads) > 0
    for a, b in zip(shared_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    logprobs, logits = policy_logprobs(policy, batch, share_prompt=True)
    assert logits.shape[:2] == batch["response_ids"].shape and logprobs[batch["response_mask"] == 0].eq(0).all()


def test_shared_prompt_scores_and_gradients_equal_the_plain_score(setup):
    policy, batch = setup
    torch.manual_seed(1)
    model = ScalarHeadModel.from_causal_lm(policy)
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"])
    plain = model.score(*args)
    (plain * torch.arange(1.0, 7.0)).sum().backward()
    plain_grads = _grads(model)
    shared = model.score_pairs(*args)
    (shared * torch.arange(1.0, 7.0)).sum().backward()
    shared_grads = _grads(model)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_batches_that_are_not_pairs_take_the_plain_forward(setup):
    policy, batch = setup
    swapped = {k: v.flip(0) if k.startswith("response") else v for k, v in batch.items()}
    odd = {k: v[:5] for k, v in batch.items()}
    mixed = {**batch, "prompt_ids": torch.cat([batch["prompt_ids"][:3], batch["prompt_ids"][3:].flip(0)])}
    assert holds_pairs(swapped) and not holds_pairs(odd) and not holds_pairs(mixed)
    for other in (odd, mixed):
        assert shared_prompt_forward(policy, other) is None
        torch.testing.assert_close(sequence_logps(policy, other, share_prompt=True), sequence_logps(policy, other))


def test_gradient_checkpointing_takes_the_plain_forward(setup):
    policy, batch = setup
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    assert shared_prompt_forward(policy, batch) is None
    torch.testing.assert_close(sequence_logps(policy, batch, share_prompt=True), sequence_logps(policy, batch))


def test_an_encoder_reward_model_takes_the_plain_score(setup):
    """A bidirectional backbone (BERT) must not score responses on the prompt's cache alone."""
    from transformers import BertConfig, BertModel

    _, batch = setup
    vocab = int(max(batch["prompt_ids"].max(), batch["response_ids"].max())) + 1
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0))
    model = ScalarHeadModel(bert)
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"])
    assert shared_prompt_forward(bert, batch) is None
    torch.testing.assert_close(model.score_pairs(*args), model.score(*args))


def test_repeated_prompts_in_any_order_share_the_prompt(setup, make_cfg):
    """A rollout with k samples per prompt, rows shuffled (an RL minibatch): each prompt runs once for
    its rows; log-probs, scores and gradients equal the plain forward's."""
    from rto.models.forward import repeated_prompt_rows
    from rto.models.retokenize import RewardScorer

    policy, pairs = setup
    order = torch.tensor([4, 0, 2, 5, 1, 3])  # prompts 1, 0, 2, 2, 1, 0: each twice, not consecutive
    batch = {k: v[order] for k, v in pairs.items() if k != "ref_logps"}
    rows = repeated_prompt_rows(batch)
    assert rows is not None and rows.unique().numel() == 3
    assert (rows[[0, 4]].unique().numel(), rows[[1, 5]].unique().numel()) == (1, 1)
    assert repeated_prompt_rows({k: v[:3] for k, v in pairs.items()}) is None  # no prompt repeats
    plain, _ = policy_logprobs(policy, batch)
    plain.sum().backward()
    plain_grads = _grads(policy)
    shared, _ = policy_logprobs(policy, batch, share_repeated=True)
    shared.sum().backward()
    shared_grads = _grads(policy)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    data = load_data(make_cfg().data)
    scorer = RewardScorer(ScalarHeadModel.from_causal_lm(policy), data.encoder, data.tokenizer)
    args = {k: batch[k] for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask")}
    calls = []
    score_pairs = scorer.model.score_pairs
    scorer.model.score_pairs = lambda *a, **k: calls.append(k["rows"]) or score_pairs(*a, **k)
    torch.testing.assert_close(scorer.score(**args, share_repeated=True), scorer.score(**args), atol=1e-5, rtol=1e-5)
    assert len(calls) == 1 and torch.equal(calls[0], rows)  # the shared path ran, once
