"""The embedded task: tokenizer, prompts, base generator, gold reward and generated data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from rto.tasks.embedded import (
    EOS,
    EmbeddedTask,
    GeneratorConfig,
    PromptSpec,
    all_prompts,
    build_tokenizer,
    gold_parts,
    gold_reward,
    gold_rewards,
    gold_token_rewards,
    label_agreement,
    optimal_response,
    parse,
    sample_response,
    split_prompts,
    vocabulary,
)
from rto.tasks.embedded.language import TOPICS

FORMER_EVAL_PROMPTS = ["write about animals in 5 words mentioning cat :",
                       "write about weather in 12 words mentioning drizzle :",
                       "write about weather in 12 words mentioning frost :"]

PROMPT = "write about food in 5 words mentioning cake :"


def _base_samples(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    specs = all_prompts()
    chosen = [specs[i] for i in rng.integers(len(specs), size=n)]
    return [s.text for s in chosen], [sample_response(s, rng) for s in chosen]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x: np.ndarray) -> np.ndarray:  # average ranks, as ties are frequent here
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        return (ends - (counts - 1) / 2)[inverse]

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


# --- language / tokenizer -------------------------------------------------------------------


def test_vocabulary_is_small_and_unique():
    words = vocabulary()
    assert len(words) == len(set(words)) < 300
    assert words[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert all(len(ws) >= 12 for ws in TOPICS.values())  # room for a 12-word distinct answer


def test_tokenizer_specials_and_one_token_per_word():
    tok = build_tokenizer()
    assert tok.pad_token_id != tok.eos_token_id
    assert len({tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id}) == 4
    assert tok.padding_side == "left"
    ids = tok(f"{PROMPT} cake zzz {EOS}")["input_ids"]
    # No <bos> added by the tokenizer, one id per word, unknown words map to <unk>.
    assert len(ids) == len(PROMPT.split()) + 3
    assert ids[-2:] == [tok.unk_token_id, tok.eos_token_id]


def test_tokenizer_left_pads():
    tok = build_tokenizer()
    batch = tok(["cake", "cake bread apple"], padding=True)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1]


def test_tokenizer_save_load_round_trip(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.padding_side == "left"
    for attr in ("pad_token", "eos_token", "bos_token", "unk_token"):
        assert getattr(loaded, attr) == getattr(tok, attr)
    text = f"{PROMPT} cake bread {EOS}"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(tok(text)["input_ids"]) == text


def test_generated_text_has_no_unknown_words():
    tok = build_tokenizer()
    prompts, responses = _base_samples(300)
    ids = tok([f"{p} {r}" for p, r in zip(prompts, responses)])["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)


# --- prompts --------------------------------------------------------------------------------


def test_prompt_round_trip():
    spec = PromptSpec(topic="food", length=5, keyword="cake")
    assert spec.text == PROMPT
    assert parse(spec.text) == spec
    assert all(parse(s.text) == s for s in all_prompts())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("write about food in 5 words :", "words"),
        ("write on food in 5 words mentioning cake :", "'on'"),
        ("write about cars in 5 words mentioning cake :", "topic"),
        ("write about food in five words mentioning cake :", "not a number"),
        ("write about food in 13 words mentioning cake :", "outside"),
        ("write about food in 5 words mentioning dog :", "keyword"),
    ],
)
def test_malformed_prompt_raises_naming_the_problem(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse(text)


# --- base generator -------------------------------------------------------------------------


def test_base_generator_respects_format_and_misses_often():
    rng = np.random.default_rng(0)
    spec = parse(PROMPT)
    responses = [sample_response(spec, rng).split() for _ in range(2000)]
    assert all(1 <= len(w) <= 16 and EOS not in w[:-1] for w in responses)
    with_eos = [w for w in responses if w[-1] == EOS]
    assert 0.7 < len(with_eos) / len(responses) < 0.8
    exact_length = np.mean([len(w) == 6 for w in with_eos])
    assert 0.05 < exact_length < 0.4
    assert 0.2 < np.mean(["cake" in w for w in responses]) < 0.8


def test_base_generator_respects_max_response_words():
    rng = np.random.default_rng(0)
    spec = parse("write about city in 12 words mentioning bus :")
    config = GeneratorConfig(max_response_words=4)
    assert all(len(sample_response(spec, rng, config).split()) <= 4 for _ in range(200))


# --- gold reward ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "dense", "sequence"),
    [
        ("cake bread apple soup rice <eos>", 3 + 4 * 1.0, 0.0),  # perfect
        ("dog cat horse rabbit tiger <eos>", -5.0, 0.0),  # off-topic
        ("cake bread apple soup rice", 7.0, -4.0),  # missing <eos>
        ("cake bread bread bread rice <eos>", 7.0, -2 * 2.0),  # two repeats
        ("cake bread apple <eos>", 5.0, -2 * 1.5),  # two words short
        ("cake bread apple soup rice pasta salad <eos>", 9.0, -2 * 1.5),  # two words long
        ("bread cake apple cake rice <eos>", 1 + 3 + 1 + 1 + 1, -2.0),  # keyword bonus once
        ("the bad zzz cake write <eos>", 0 - 2 - 2 + 3 - 2, 0.0),  # neutral, negative, unk, prompt
        ("<eos>", 0.0, -5 * 1.5),
        ("", 0.0, -5 * 1.5 - 4.0),
    ],
)
def test_gold_reward_by_hand(response, dense, sequence):
    parts = gold_parts(PROMPT, response)
    assert parts.dense == pytest.approx(dense)
    assert parts.sequence == pytest.approx(sequence)
    assert gold_reward(PROMPT, response) == pytest.approx(dense + sequence)
    assert sum(gold_token_rewards(PROMPT, response)) == pytest.approx(dense)


def test_gold_token_rewards_align_with_tokens():
    response = "bread cake cake dog hate the <eos>"
    assert gold_token_rewards(PROMPT, response) == [1.0, 3.0, 1.0, -1.0, -2.0, 0.0, 0.0]
    assert len(build_tokenizer()(response)["input_ids"]) == 7


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        ("cake <eos> bread", "after <eos>"),
        ("cake <eos> <eos>", "after <eos>"),
    ],
)
def test_invalid_response_raises_naming_the_problem(response, problem):
    with pytest.raises(ValueError, match=problem):
        gold_reward(PROMPT, response)


def test_sampled_special_tokens_score_as_non_words():
    # a policy can sample <pad> / <bos>; the judge scores them NEGATIVE (-2) instead of failing
    assert gold_token_rewards(PROMPT, "cake <pad> <eos>")[1] == -2.0
    assert gold_token_rewards(PROMPT, "<bos> cake <eos>")[0] == -2.0


def test_gold_reward_rejects_malformed_prompt():
    with pytest.raises(ValueError, match="prompt"):
        gold_reward("write about food", "cake <eos>")


def test_gold_rewards_batch():
    rewards = gold_rewards([PROMPT, PROMPT], ["cake bread apple soup rice <eos>", "<eos>"])
    assert rewards.dtype == np.float64
    np.testing.assert_allclose(rewards, [7.0, -7.5])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        gold_rewards([PROMPT, PROMPT], ["<eos>"])


_RESPONSE_WORDS = [*vocabulary()[4:], EOS]


@settings(max_examples=300, deadline=None)
@given(
    spec_index=st.integers(0, len(all_prompts()) - 1),
    words=st.lists(st.sampled_from(_RESPONSE_WORDS), max_size=16),
)
def test_optimal_response_is_optimal(spec_index, words):
    prompt = all_prompts()[spec_index].text
    if EOS in words:
        words = words[: words.index(EOS) + 1]
    best = gold_reward(prompt, optimal_response(prompt))
    assert best == pytest.approx(parse(prompt).length * 1.0 + 2.0)
    assert gold_reward(prompt, " ".join(words)) <= best


def test_both_parts_matter_and_neither_explains_the_ranking():
    prompts, responses = _base_samples(2000)
    parts = [gold_parts(p, r) for p, r in zip(prompts, responses)]
    dense = np.array([p.dense for p in parts])
    sequence = np.array([p.sequence for p in parts])
    total = dense + sequence
    for part in (dense, sequence):
        assert 0.2 < np.corrcoef(total, part)[0, 1] < 0.9
        assert 0.2 < _spearman(total, part) < 0.9


def test_base_generator_leaves_headroom():
    prompts, responses = _base_samples(2000)
    base = gold_rewards(prompts, responses)
    optimal = gold_rewards(prompts, [optimal_response(p) for p in prompts])
    assert optimal.mean() - base.mean() > 2 * base.std()
    assert np.mean(base >= optimal) < 0.01


# --- generated data -------------------------------------------------------------------------

SMALL = dict(n_sft=200, n_pairs=300, n_train_prompts=100, n_val_prompts=30, n_test_prompts=20)


def test_identical_seed_gives_identical_data():
    a, b = EmbeddedTask(seed=3, **SMALL), EmbeddedTask(seed=3, **SMALL)
    assert a.sft_rows() == b.sft_rows()
    assert a.preference_rows() == b.preference_rows()
    for name in ("train", "val", "test"):
        assert a.prompts(name) == b.prompts(name)
    c = EmbeddedTask(seed=4, **SMALL)
    assert a.sft_rows() != c.sft_rows()
    assert a.preference_rows() != c.preference_rows()


def test_held_out_prompts_do_not_depend_on_training_sizes():
    other = EmbeddedTask(seed=0, n_train_prompts=7, n_val_prompts=30, n_test_prompts=20)
    for name in ("val", "test"):
        assert EmbeddedTask(seed=0, **SMALL).prompts(name) == other.prompts(name)


def test_test_prompts_are_the_former_eval_prompts():
    # the test band of the hash is the one the single held-out set used: earlier results were read on
    # these prompts. The first three of the default run's 190 (seed 0), as drawn before validation existed.
    test = EmbeddedTask(seed=0, n_test_prompts=190).prompts("test")
    assert len(set(test)) == 190
    assert test[:3] == FORMER_EVAL_PROMPTS


def test_three_prompt_pools_are_disjoint_and_cover_every_prompt():
    pools = split_prompts(0.15, 0.2)
    texts = {name: {spec.text for spec in pool} for name, pool in pools.items()}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"] and not texts["val"] & texts["test"]
    assert sum(len(t) for t in texts.values()) == len(all_prompts())
    assert {name: len(t) for name, t in texts.items()} == {"train": 647, "val": 170, "test": 191}
    # a larger validation share takes prompts from training only: the test pool does not move
    assert {spec.text for spec in split_prompts(0.3, 0.2)["test"]} == texts["test"]


def test_rows_have_the_real_data_schema_and_sizes():
    task = EmbeddedTask(seed=0, **SMALL)
    sft, pairs = task.sft_rows(), task.preference_rows()
    assert len(sft) == 200 and len(pairs) == 300
    assert all(set(r) == {"prompt", "response"} for r in sft)
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in pairs)
    assert all(r["chosen"] != r["rejected"] for r in pairs)
    assert [len(task.prompts(name)) for name in ("train", "val", "test")] == [100, 30, 20]


def test_validation_and_test_prompts_are_never_trained_on():
    held_out = set(EmbeddedTask(seed=0, **SMALL).prompts("val")) | set(EmbeddedTask(seed=0, **SMALL).prompts("test"))
    for seed in (0, 1):  # the split does not depend on the seed
        task = EmbeddedTask(seed=seed, **SMALL)
        trained = {r["prompt"] for r in task.sft_rows() + task.preference_rows()}
        assert trained <= set(task.train_prompts())
        assert not trained & held_out
        assert not set(task.train_prompts()) & held_out


def test_bradley_terry_labels_are_noisy_but_informative():
    agreement = EmbeddedTask(seed=0, n_pairs=2000).label_agreement()
    assert 0.7 < agreement < 0.97
    sharper = EmbeddedTask(seed=0, n_pairs=2000, bt_temperature=0.25).label_agreement()
    assert sharper > agreement + 0.05


def test_label_agreement_counts_by_hand():
    rows = [
        {"prompt": PROMPT, "chosen": "cake <eos>", "rejected": "dog <eos>"},  # agrees
        {"prompt": PROMPT, "chosen": "dog <eos>", "rejected": "cake <eos>"},  # disagrees
        {"prompt": PROMPT, "chosen": "the <eos>", "rejected": "a <eos>"},  # gold tie: left out
        {"prompt": PROMPT, "chosen": "bread <eos>", "rejected": "hate <eos>"},  # agrees
    ]
    assert label_agreement(rows) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        (dict(n_train_prompts=5000), "n_train_prompts"),
        (dict(n_test_prompts=5000), "n_test_prompts"),
        (dict(n_val_prompts=5000), "n_val_prompts"),
        (dict(bt_temperature=0.0), "bt_temperature"),
        (dict(n_sft=-1), "n_sft"),
        (dict(test_prompt_fraction=1.5), "test_prompt_fraction"),
        (dict(val_prompt_fraction=0.5, test_prompt_fraction=0.6), "val_prompt_fraction"),
    ],
)
def test_task_rejects_bad_parameters(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        EmbeddedTask(**kwargs)
