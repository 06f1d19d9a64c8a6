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


def test_sampler_runs_each_repeated_prompt_once_with_the_same_samples(setup, monkeypatch):
    """k samples per prompt (`share_repeated`, what GRPO / RLOO rollouts use): the prompt's forward
    runs once per distinct prompt, and the sampled tokens and their log-probs are those of the plain
    sampler (left-padded prompts of different lengths, the same random stream)."""
    from rto.rl import rollout as rollout_module
    from rto.rl.rollout import repeat_prompts, sample_responses

    policy, pairs = setup
    half = pairs["prompt_ids"].shape[0] // 2
    prompt_ids, prompt_mask, _ = repeat_prompts({"prompt_ids": pairs["prompt_ids"][:half],
                                                 "prompt_mask": pairs["prompt_mask"][:half]}, 3)
    calls = []
    shared_cache = rollout_module.shared_prompt_cache
    monkeypatch.setattr(rollout_module, "shared_prompt_cache",
                        lambda model, ids, *a, **k: calls.append(ids.shape[0]) or shared_cache(model, ids, *a, **k))

    def sample(share: bool):
        return sample_responses(policy, prompt_ids, prompt_mask, 6, eos_id=2, pad_id=0, temperature=0.8,
                                generator=torch.Generator().manual_seed(0), return_logprobs=True,
                                share_repeated=share)
    plain, shared = sample(False), sample(True)
    assert calls == [3 * half]  # called once, for the shared sampler only
    assert torch.equal(shared[0], plain[0]) and torch.equal(shared[1], plain[1])
    torch.testing.assert_close(shared[2], plain[2], atol=1e-6, rtol=1e-6)


# ---- the prompts' shared prefix (`prefix_len`: a chat template's system prompt), run once ----------
PREFIX_ROWS = [  # every prompt begins with "a b c" (with BOS: 4 shared tokens); lengths 5, 9 and 6
    {"prompt": "a b c d", "chosen": "e f g", "rejected": ""},
    {"prompt": "a b c e f g h i", "chosen": "j", "rejected": "k l m n o"},
    {"prompt": "a b c h g", "chosen": "f e d c", "rejected": "b"},
]


@pytest.fixture
def prefix_batch(setup, make_cfg):
    """`(policy, batch)`: six rows, three prompts of different lengths that share their first 4 tokens,
    responses of different lengths (an empty one), `prefix_len` set as the RL loop sets it."""
    from rto.models.forward import common_prefix_length

    policy, _ = setup
    data = load_data(make_cfg().data)
    pairs = PairCollator(Encoder(data.tokenizer, max_prompt_tokens=16, max_response_tokens=8))(PREFIX_ROWS)
    order = torch.tensor([0, 4, 2, 1, 5, 3])  # no two neighbours share a prompt
    batch = {k: v[order] for k, v in pairs.items() if k != "ref_logps"}
    prefix_len = common_prefix_length(batch["prompt_ids"], batch["prompt_mask"], 2)
    assert prefix_len == 4 and batch["prompt_mask"].sum(1).unique().numel() == 3  # left padding differs per row
    return policy, {**batch, "prefix_len": prefix_len}


def test_common_prefix_length_counts_shared_leading_real_tokens():
    from rto.models.forward import common_prefix_length, split_prefix

    ids = torch.tensor([[0, 0, 7, 8, 9, 4], [7, 8, 9, 5, 6, 3], [0, 7, 8, 9, 1, 2]])
    mask = (ids != 0).long()
    assert common_prefix_length(ids, mask, 1) == 3
    assert common_prefix_length(ids, mask, 3) == 3 and common_prefix_length(ids, mask, 4) == 0
    assert common_prefix_length(ids, mask, None) == 0 and common_prefix_length(ids, mask, 0) == 0
    assert common_prefix_length(ids[:1], mask[:1], 1) == 0  # one row: nothing to share
    # a prompt that is all prefix keeps its last token: every row needs one of its own
    assert common_prefix_length(torch.tensor([[0, 7, 8, 9], [7, 8, 9, 5]]), torch.tensor([[0, 1, 1, 1], [1] * 4]), 1) == 2
    right_padded = torch.tensor([[7, 8, 9, 0], [7, 8, 9, 5]])
    assert common_prefix_length(right_padded, (right_padded != 0).long(), 1) == 0  # not left-padded
    holed = torch.tensor([[7, 0, 9, 4], [7, 8, 9, 5]])
    assert common_prefix_length(holed, (holed != 0).long(), 1) == 0  # a pad between real tokens
    prefix, rest, rest_mask = split_prefix(ids, mask, 3)
    assert prefix.tolist() == [[7, 8, 9]]
    assert rest.tolist() == [[0, 0, 4], [5, 6, 3], [0, 1, 2]] and rest_mask.tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 1]]
    with pytest.raises(ValueError, match="do not share"):
        split_prefix(torch.tensor([[7, 8, 1, 4], [7, 8, 9, 5]]), torch.ones(2, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="a token after its prefix"):
        split_prefix(ids, mask, 4)  # the first prompt is all prefix


def test_sliding_window_models_keep_the_plain_forward(prefix_batch):
    """A sliding window counts cache columns, and the prefix layout puts pads between the prefix and the
    rest of a prompt: such a model takes the plain forward, and its numbers stay the plain ones."""
    from transformers import MistralConfig, MistralForCausalLM

    from rto.models.forward import prefixed_inputs, repeated_prompt_rows, shared_prompt_cache, sliding_window_attention

    policy, batch = prefix_batch
    config = MistralConfig(vocab_size=policy.config.vocab_size, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=128, sliding_window=4)
    torch.manual_seed(0)
    mistral = MistralForCausalLM(config).eval()
    assert sliding_window_attention(mistral) and not sliding_window_attention(policy)
    args = [batch[k] for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask")]
    assert prefixed_inputs(mistral, *args, batch["prefix_len"]) is None
    plain_batch = {k: v for k, v in batch.items() if k != "prefix_len"}
    with torch.no_grad():
        torch.testing.assert_close(policy_logprobs(mistral, batch)[0], policy_logprobs(mistral, plain_batch)[0],
                                   atol=0, rtol=0)
        # repeated prompts (k samples) are still run once each, in the plain layout
        shared = shared_prompt_cache(mistral, batch["prompt_ids"], batch["prompt_mask"],
                                     repeated_prompt_rows(batch), logits=True, prefix_len=batch["prefix_len"])
        assert shared is not None and torch.equal(shared[2], batch["prompt_mask"].long())
        torch.testing.assert_close(policy_logprobs(mistral, batch, share_repeated=True)[0],
                                   policy_logprobs(mistral, plain_batch)[0], atol=1e-5, rtol=1e-5)


def test_shared_prefix_logprobs_values_scores_and_gradients_equal_the_plain_forward(prefix_batch, monkeypatch):
    """Log-probs, the critic's values, the reward model's scores and all their gradients, with the
    shared prefix run once, equal the plain forward's (Llama and GPT-2)."""
    from rto.models import forward as forward_module
    from rto.models.forward import repeated_prompt_rows

    policy, batch = prefix_batch
    plain_batch = {k: v for k, v in batch.items() if k != "prefix_len"}
    heads = []
    split = forward_module.split_prefix
    monkeypatch.setattr(forward_module, "split_prefix", lambda *a: heads.append(a[2]) or split(*a))
    def backward(logprobs):
        (logprobs * torch.arange(1, logprobs.shape[1] + 1)).sum().backward()
    plain, _ = policy_logprobs(policy, plain_batch)
    backward(plain)
    plain_grads = _grads(policy)
    shared, _ = policy_logprobs(policy, batch)
    backward(shared)
    shared_grads = _grads(policy)
    repeated, _ = policy_logprobs(policy, batch, share_repeated=True)  # each prompt once too (k samples)
    backward(repeated)
    repeated_grads = _grads(policy)
    assert heads == [4, 4]  # the shared paths ran, with the prefix
    assert len(shared_grads) == len(repeated_grads) == len(plain_grads) > 0
    for logprobs, grads in ((shared, shared_grads), (repeated, repeated_grads)):
        torch.testing.assert_close(logprobs, plain.detach(), atol=1e-5, rtol=1e-5)
        for a, b in zip(grads, plain_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

    critic = ScalarHeadModel.from_causal_lm(policy)
    args = {k: plain_batch[k] for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask")}
    plain_values = critic.response_values(**args)
    plain_values.sum().backward()
    plain_grads = _grads(critic)
    shared_values = critic.response_values(**args, prefix_len=batch["prefix_len"])
    shared_values.sum().backward()
    shared_grads = _grads(critic)
    assert heads == [4, 4, 4]
    torch.testing.assert_close(shared_values, plain_values.detach(), atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    scores = critic.score(**args)
    torch.testing.assert_close(critic.score(**args, prefix_len=batch["prefix_len"]), scores, atol=1e-5, rtol=1e-5)
    rows = repeated_prompt_rows(batch)
    torch.testing.assert_close(critic.score_pairs(**args, rows=rows, prefix_len=batch["prefix_len"]), scores,
                               atol=1e-5, rtol=1e-5)
    assert heads == [4, 4, 4, 4, 4]


def test_sampler_with_a_shared_prefix_draws_the_plain_samples(prefix_batch):
    """The sampler with the prefix run once: the same tokens and log-probs as the plain sampler (the
    same random stream), and those log-probs equal a full forward's on the prefix path."""
    from rto.rl.rollout import sample_responses

    policy, batch = prefix_batch

    def sample(prefix_len: int):
        return sample_responses(policy, batch["prompt_ids"], batch["prompt_mask"], 6, eos_id=2, pad_id=0,
                                temperature=0.8, generator=torch.Generator().manual_seed(0), return_logprobs=True,
                                prefix_len=prefix_len)
    plain, shared = sample(0), sample(batch["prefix_len"])
    assert torch.equal(shared[0], plain[0]) and torch.equal(shared[1], plain[1])
    torch.testing.assert_close(shared[2], plain[2], atol=1e-6, rtol=1e-6)
    rollout = {**batch, "response_ids": shared[0], "response_mask": shared[1]}
    with torch.no_grad():
        full, _ = policy_logprobs(policy, rollout, temperature=0.8)
    torch.testing.assert_close(full, shared[2], atol=1e-5, rtol=1e-5)


def test_shared_prefix_through_a_lora_model_equals_the_plain_forward(prefix_batch):
    """A LoRA policy (peft wraps the model and forwards the cache keyword, the position ids and the
    mask): the prefix path's log-probs and the adapter's gradients equal the plain forward's."""
    import copy

    from rto.models.lora import add_lora

    policy, batch = prefix_batch
    lora = add_lora(copy.deepcopy(policy), OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0,
                                                             "target_modules": "all-linear"}))
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: B != 0, so the adapter changes the numbers
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    plain_batch = {k: v for k, v in batch.items() if k != "prefix_len"}
    results = []
    for b in (plain_batch, batch):
        logprobs, _ = policy_logprobs(lora, b)
        logprobs.sum().backward()
        results.append((logprobs.detach(), [p.grad.clone() for p in lora.parameters() if p.grad is not None]))
        lora.zero_grad()
    (plain, plain_grads), (shared, shared_grads) = results
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    assert len(shared_grads) == len(plain_grads) > 0  # the adapter's parameters only
    for a, b in zip(shared_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_long_prefix_before_short_rests_and_responses(setup, make_cfg):
    """The prefix longer than the rest of every prompt and its response together (8 shared tokens, then
    one of each row's own and one response token): log-probs and the sampler equal the plain ones."""
    from rto.models.forward import common_prefix_length
    from rto.rl.rollout import sample_responses

    policy, _ = setup
    data = load_data(make_cfg().data)
    rows = [{"prompt": f"a b c d e f g {w}", "chosen": "h", "rejected": "i"} for w in ("j", "k")]
    batch = PairCollator(Encoder(data.tokenizer, max_prompt_tokens=16, max_response_tokens=8))(rows)
    batch = {k: v for k, v in batch.items() if k != "ref_logps"}
    prefix_len = common_prefix_length(batch["prompt_ids"], batch["prompt_mask"], 2)
    assert prefix_len > batch["prompt_ids"].shape[1] - prefix_len + batch["response_ids"].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(policy_logprobs(policy, {**batch, "prefix_len": prefix_len})[0],
                                   policy_logprobs(policy, batch)[0], atol=1e-5, rtol=1e-5)

    def sample(prefix: int):
        return sample_responses(policy, batch["prompt_ids"], batch["prompt_mask"], 3, eos_id=2, pad_id=0,
                                generator=torch.Generator().manual_seed(0), return_logprobs=True, prefix_len=prefix)
    plain, shared = sample(0), sample(prefix_len)
    assert torch.equal(shared[0], plain[0])
    torch.testing.assert_close(shared[2], plain[2], atol=1e-6, rtol=1e-6)
