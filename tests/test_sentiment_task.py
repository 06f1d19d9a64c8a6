"""The sentiment task's building blocks: prompts, the VADER-based gold, the Bradley-Terry labeller and
the two-sample helper (on a tiny saved model; the real SmolLM2 is measured by benchmarks/sentiment_probe.py)."""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from rto.models.factory import load_tokenizer

from rto.tasks.sentiment import (END_MARKER, bradley_terry_labels, chat_encoder, expected_agreement, gold_breakdown,
                                 gold_parts, gold_reward, gold_rewards, label_agreement, prompt_pool,
                                 sample_response_pairs, sentiment_prompts, things_by_split)
from rto.tasks.sentiment import gold as gold_module
from rto.tasks.sentiment.prompts import LENGTHS, REQUESTS, SPLITS, THINGS, TONES
from tests.real_assets import THINGS as THINGS_IN_VOCAB
from tests.real_assets import save_tiny_llama

NATURAL_POSITIVE = ("I have used this mug every morning for a month. It keeps my coffee hot and the handle "
                    "is comfortable. I like it a lot.")


def g(text: str) -> float:
    """Gold of a response that ended (carries the end marker)."""
    return gold_reward("Write a short review of a coffee mug in one sentence.", text + END_MARKER)


# --- prompts --------------------------------------------------------------------------------


def test_prompts_are_deterministic_for_a_seed_and_sized_as_asked():
    first, again, other = (sentiment_prompts(s, 300, 40, 50) for s in (0, 0, 1))
    assert first == again
    assert first.train != other.train
    for split, n in (("train", 300), ("validation", 40), ("test", 50)):
        drawn = getattr(first, split)
        assert len(drawn) == len(set(drawn)) == n
        assert set(drawn) <= set(prompt_pool(split))


def test_splits_hold_out_things_not_just_strings():
    by_split = things_by_split()
    assert sorted(itertools.chain(*by_split.values())) == sorted(THINGS)  # a partition
    pools = {s: prompt_pool(s) for s in SPLITS}
    assert sum(len(p) for p in pools.values()) == len(REQUESTS) * len(THINGS) * len(LENGTHS) * len(TONES)
    assert min(len(p) for p in pools.values()) > 3000  # thousands of distinct prompts per split
    for split, pool in pools.items():
        mentioned = {thing for thing in THINGS if any(f" {thing} " in prompt for prompt in pool)}
        assert mentioned == set(by_split[split])  # a prompt only names things of its own split


def test_one_split_size_never_moves_another_split():
    small, large = sentiment_prompts(3, 10, 20, 30), sentiment_prompts(3, 500, 20, 30)
    assert (small.validation, small.test) == (large.validation, large.test)
    with pytest.raises(ValueError, match="n_test=100000: the test split has"):
        sentiment_prompts(0, 1, 1, 100_000)


def test_prompt_wording_asks_for_no_sentiment():
    """The instruction words are (nearly) neutral to VADER: positivity is for RL to learn."""
    lexicon = gold_module.analyzer().lexicon
    fixed = [r.format(thing="") for r in REQUESTS] + list(LENGTHS) + list(TONES)
    valences = [abs(lexicon[w]) for text in fixed for w in gold_module.words(text) if w in lexicon]
    assert max(valences) <= 1.0


# --- gold -----------------------------------------------------------------------------------


def test_gold_follows_vader_rules_on_hand_checked_sentences():
    assert g("The coffee mug is not good.") < 0 < g("The coffee mug is good.") < g("The coffee mug is very good.")
    # contrast: the clause after "but" decides
    assert g("The mug looks good but the handle is terrible.") < 0 < g("The handle is terrible but the mug looks good.")
    assert g(NATURAL_POSITIVE) > 0.5
    assert g("The bus was late again and I missed my meeting.") < 0


@pytest.mark.parametrize("hack", ["great great love love amazing!!!", "I love it. I love it. I love it. I love it.",
                                  "Good good good good good good good good.",
                                  "amazing wonderful fantastic excellent superb"])
def test_gamed_positive_text_scores_below_a_natural_review(hack):
    assert gold_parts(hack + END_MARKER).vader > gold_parts(NATURAL_POSITIVE + END_MARKER).vader  # VADER alone is fooled
    assert g(hack) < g(NATURAL_POSITIVE)


def test_repetition_and_word_list_penalties_spare_prose():
    natural = gold_parts(NATURAL_POSITIVE + END_MARKER)
    assert natural.repetition == natural.word_list == natural.short == natural.unended == natural.overlong == 0
    assert natural.total == natural.vader
    assert gold_parts("I love it. I love it. I love it." + END_MARKER).repetition > 0.5
    assert gold_parts("amazing wonderful fantastic excellent superb" + END_MARKER).word_list == pytest.approx(gold_module.LIST_COST)


@pytest.mark.parametrize("empty", ["", "   ", "\n"])
def test_an_empty_answer_is_worse_than_a_mildly_negative_one(empty):
    assert g(empty) == -gold_module.SHORT_COST
    assert g(empty) < g("The coffee mug is a bit disappointing.") < 0


def test_a_short_answer_pays_per_missing_word():
    assert gold_parts("Nice mug." + END_MARKER).short == pytest.approx(gold_module.SHORT_COST * 3 / 5)


def test_a_cut_off_or_runaway_answer_pays():
    assert g(NATURAL_POSITIVE) - gold_reward("", NATURAL_POSITIVE) == pytest.approx(gold_module.NO_END_COST)
    distinct = ["".join(p) for p in itertools.product("bcdfg", "aeiou", "klmnp")]  # 125 made-up words
    at_limit, far_over = (" ".join(distinct[:n]) + END_MARKER for n in (gold_module.MAX_WORDS, 3 * gold_module.MAX_WORDS))
    assert gold_parts(at_limit).overlong == 0
    assert gold_parts(far_over).overlong == gold_module.LONG_COST
    half_over = " ".join(distinct[:int(1.5 * gold_module.MAX_WORDS)]) + END_MARKER
    assert gold_parts(half_over).overlong == pytest.approx(gold_module.LONG_COST / 2)


def test_the_end_marker_is_the_tokenizers():
    assert gold_reward("", NATURAL_POSITIVE + "</s>", end_marker="</s>") == pytest.approx(g(NATURAL_POSITIVE))
    with pytest.raises(ValueError, match="end_marker"):
        gold_parts(NATURAL_POSITIVE, end_marker="")


def test_batch_gold_and_breakdown_agree():
    responses = [NATURAL_POSITIVE + END_MARKER, "", "bad bad bad", "The mug is fine." + END_MARKER]
    scores = gold_rewards(["p"] * 4, responses)
    assert scores.dtype == np.float64 and scores.shape == (4,)
    parts = gold_breakdown(responses)
    np.testing.assert_allclose(parts["total"], scores)
    np.testing.assert_allclose(parts["vader"] - sum(parts[k] for k in ("short", "unended", "overlong", "repetition",
                                                                         "word_list")), scores)
    with pytest.raises(ValueError, match="3 prompts but 4 responses"):
        gold_rewards(["p"] * 3, responses)


# --- labels ---------------------------------------------------------------------------------


def _length_gold(prompts, responses):
    """A stand-in judge with margins chosen by the test: the score is the response's length / 10."""
    return np.array([len(r) / 10 for r in responses])


def test_labels_agree_with_the_gold_as_bradley_terry_says():
    n = 4000
    first, second = [f"{i:05d}" + "x" * 5 for i in range(n)], [f"{i:05d}" for i in range(n)]  # margin 0.5 each
    for temperature in (0.25, 0.5, 2.0):
        rows, stats = bradley_terry_labels(["p"] * n, first, second, _length_gold, temperature, seed=1)
        expected = 1 / (1 + np.exp(-0.5 / temperature))
        assert stats.expected_agreement == pytest.approx(expected)
        assert abs(stats.realised_agreement - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
        assert label_agreement(rows, _length_gold) == pytest.approx(stats.realised_agreement)
    rows, stats = bradley_terry_labels(["p"] * n, first, second, _length_gold, 0.01, seed=1)
    assert stats.realised_agreement == 1.0 and all(len(r["chosen"]) > len(r["rejected"]) for r in rows)


def test_labels_schema_ties_identical_pairs_and_seed():
    prompts = ["a", "b", "c", "d"]
    first, second = ["same", "tie1", "long answer", "x"], ["same", "tie2", "short", "yyyy"]
    rows, stats = bradley_terry_labels(prompts, first, second, _length_gold, 0.3, seed=0)
    assert (stats.n_pairs, stats.n_identical, stats.n_gold_ties) == (3, 1, 1)
    assert [r["prompt"] for r in rows] == ["b", "c", "d"]
    for row, a, b in zip(rows, first[1:], second[1:]):
        assert set(row) == {"prompt", "chosen", "rejected"} and {row["chosen"], row["rejected"]} == {a, b}
    many = [bradley_terry_labels(["p"] * 200, ["ab"] * 200, ["a"] * 200, _length_gold, 1.0, seed=s)[0] for s in (0, 0, 1)]
    assert many[0] == many[1] != many[2]
    assert np.isnan(expected_agreement(np.zeros(3), 1.0))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        bradley_terry_labels(prompts, first, second, _length_gold, 0.0, seed=0)


# --- sampling -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny"), chat_template=True)
    torch.manual_seed(0)
    # the pipeline's tokenizer loader: pad = EOS where the tokenizer has no pad token
    return AutoModelForCausalLM.from_pretrained(folder).eval(), load_tokenizer(OmegaConf.create({"pretrained": str(folder)}))


def test_two_samples_per_prompt_decoded_with_their_end(tiny_policy):
    model, tok = tiny_policy
    prompts = sentiment_prompts(0, 6, 0, 0).train
    encoder = chat_encoder(tok, 64, 40)
    pairs = sample_response_pairs(model, encoder, prompts, max_new_tokens=40, seed=3, batch_size=4)
    again = sample_response_pairs(model, encoder, prompts, max_new_tokens=40, seed=3, batch_size=4)
    assert replace(pairs, seconds=0) == replace(again, seconds=0)
    assert len(pairs.first) == len(pairs.second) == 6
    assert pairs.first != pairs.second
    ended = pairs.first_ended + pairs.second_ended
    assert any(ended) and not all(ended)
    for text, done, length in zip(pairs.first + pairs.second, ended, pairs.first_lengths + pairs.second_lengths):
        assert text.endswith(tok.eos_token) == done and 1 <= length <= 40
        assert (length == 40) or done
    assert pairs.first != sample_response_pairs(model, encoder, prompts, 40, seed=4, batch_size=4).first
    assert encoder.full_prompt(prompts[0])[:1] == tok.convert_tokens_to_ids(["<s>"])
    assert "<|im_start|>" in tok.decode(encoder.full_prompt(prompts[0]))  # the chat template


def test_greedy_samples_of_one_prompt_coincide(tiny_policy):
    """Rows i and i + n of a sampler call belong to prompt i: greedy decoding makes them equal."""
    model, tok = tiny_policy
    model = copy.deepcopy(model)
    torch.manual_seed(0)
    for param in model.parameters():  # large weights: the greedy answer depends on the prompt
        torch.nn.init.normal_(param, std=1.0)
    prompts = [f"what color is the {thing} ?" for thing in THINGS_IN_VOCAB]  # words the tiny tokenizer knows
    pairs = sample_response_pairs(model, chat_encoder(tok, 64, 8), prompts, 8, temperature=1e-4, seed=0, batch_size=3)
    assert pairs.first == pairs.second
    assert len(set(pairs.first)) > 1  # prompts lead to different answers, so a mix-up would show


def test_chat_encoder_keeps_a_cut_off_response_cut_off(tiny_policy):
    _, tok = tiny_policy
    encoder = chat_encoder(tok, 64, 16)
    assert encoder.response("the sky is blue")[-1] != tok.eos_token_id
    assert encoder.response("the sky is blue " + tok.eos_token)[-1] == tok.eos_token_id
