"""Row validation: every kind of bad row gets a reason and its row number; property tests on the validators."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rto.data import sources
from rto.data.collate import Encoder
from rto.data.validate import InvalidDataError, prompt_problems, row_problems, validate_rows
from rto.main import train
from rto.tasks.embedded import build_tokenizer
from tests.conftest import compose_config

ENCODER = Encoder(build_tokenizer(), max_prompt_tokens=16, max_response_tokens=16)
GOOD_SFT = {"prompt": "write about food in 5 words mentioning cake :", "response": "cake soup <eos>"}
GOOD_PAIR = {"prompt": GOOD_SFT["prompt"], "chosen": "cake soup <eos>", "rejected": "dull often"}
LONG = " ".join(["cake"] * 40)

# (kind, row, expected reason): every bad input this suite tries by hand
BAD_ROWS = [
    ("sft", {"prompt": GOOD_SFT["prompt"]}, "missing field 'response'"),
    ("sft", {"response": "cake"}, "missing field 'prompt'"),
    ("sft", {"prompt": None, "response": "cake"}, "missing field 'prompt'"),
    ("sft", {**GOOD_SFT, "response": ""}, "response is empty"),
    ("sft", {**GOOD_SFT, "response": "  \n\t"}, "response is empty"),
    ("sft", {**GOOD_SFT, "response": 3}, "response is not text (int)"),
    ("sft", {**GOOD_SFT, "response": ["cake"]}, "response is not text (list)"),
    ("sft", {**GOOD_SFT, "response": b"cake"}, "response is not text (bytes)"),
    ("sft", {**GOOD_SFT, "response": "ca\x00ke"}, "NUL byte"),
    ("sft", {**GOOD_SFT, "response": LONG}, "response has 40 tokens, over data.max_response_tokens=16"),
    ("sft", {**GOOD_SFT, "prompt": LONG}, "prompt has 41 tokens, over data.max_prompt_tokens=16"),
    ("sft", "a string, not a row", "row is a str"),
    ("sft", None, "row is a NoneType"),
    ("pair", {**GOOD_PAIR, "rejected": GOOD_PAIR["chosen"]}, "chosen and rejected are identical"),
    ("pair", {**GOOD_PAIR, "rejected": GOOD_PAIR["chosen"] + "  "}, "chosen and rejected are identical"),
    ("pair", {**GOOD_PAIR, "chosen": ""}, "chosen is empty"),
    ("pair", {k: v for k, v in GOOD_PAIR.items() if k != "rejected"}, "missing field 'rejected'"),
    ("pair", {**GOOD_PAIR, "chosen": 1.5}, "chosen is not text (float)"),
    ("pair", {**GOOD_PAIR, "rejected": LONG}, "rejected has 40 tokens"),
    ("prompt", "", "prompt is empty"),
    ("prompt", 7, "prompt is not text (int)"),
    ("prompt", LONG, "prompt has 41 tokens"),
]


@pytest.mark.parametrize("kind, row, reason", BAD_ROWS)
def test_each_bad_row_gets_its_reason_and_row_number(kind, row, reason):
    good = GOOD_SFT if kind == "sft" else GOOD_PAIR if kind == "pair" else GOOD_SFT["prompt"]
    rows = [good, good, row, good]
    with pytest.raises(InvalidDataError, match=r"1 of 4 rows are invalid") as err:
        validate_rows(rows, kind, ENCODER, name="rows")
    assert "row 2: " in str(err.value) and reason in str(err.value)
    assert validate_rows(rows, kind, ENCODER, on_invalid="skip") == [good, good, good]


def test_good_rows_pass_unchanged():
    assert validate_rows([GOOD_SFT], "sft", ENCODER) == [GOOD_SFT]
    assert validate_rows([GOOD_PAIR], "pair", ENCODER) == [GOOD_PAIR]


def test_all_invalid_is_an_error_even_when_skipping():
    with pytest.raises(InvalidDataError, match="every one of the 2 rows"):
        validate_rows([{}, {}], "sft", ENCODER, on_invalid="skip")


def test_error_lists_the_first_rows_and_counts_the_rest():
    rows = [{"prompt": "x", "response": ""}] * 25
    with pytest.raises(InvalidDataError, match=r"(?s)25 of 25 .*response is empty: 25.*row 9:.*and 15 more"):
        validate_rows(rows, "sft", ENCODER)


def test_load_data_validates_every_source(tmp_path, monkeypatch):
    original = sources.SOURCES["embedded"]

    def with_bad_rows(cfg, tokenizer):
        bundle = original(cfg, tokenizer)
        bundle.sft_rows[5] = {**bundle.sft_rows[5], "response": ""}
        bundle.train_pairs[3] = {**bundle.train_pairs[3], "rejected": bundle.train_pairs[3]["chosen"]}
        return bundle
    monkeypatch.setitem(sources.SOURCES, "embedded", with_bad_rows)
    with pytest.raises(InvalidDataError, match=r"(?s)sft rows: 1 of 128 rows are invalid.*row 5: response is empty"):
        train(compose_config("stage=sft", output_dir=tmp_path))
    bundle = sources.load_data(compose_config("data.on_invalid=skip", output_dir=tmp_path).data)
    assert len(bundle.sft_rows) == 127 and all(r["response"] for r in bundle.sft_rows)


# ---- properties --------------------------------------------------------------------------------
words = st.sampled_from(["cake", "soup", "food", "write", "about", "in", "words", "<eos>", "dull"])
texts = st.lists(words, min_size=1, max_size=12).map(" ".join)
anything = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.binary(), st.text(),
                     st.lists(st.text(), max_size=2), texts)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(prompt=anything, response=anything)
def test_sft_row_valid_iff_both_fields_are_nonblank_text_within_limits(prompt, response):
    problems = row_problems({"prompt": prompt, "response": response}, "sft", ENCODER)
    ok_text = all(isinstance(v, str) and v.strip() and "\x00" not in v for v in (prompt, response))
    if not ok_text:
        assert problems
    else:
        fits = (len(ENCODER.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1 <= 16
                and len(ENCODER.tokenizer(response, add_special_tokens=False)["input_ids"]) <= 16)
        assert (problems == []) == fits


@PROPERTY
@given(prompt=texts, chosen=anything, rejected=anything)
def test_pair_with_identical_responses_is_never_valid(prompt, chosen, rejected):
    assert row_problems({"prompt": prompt, "chosen": chosen, "rejected": chosen}, "pair", ENCODER)
    problems = row_problems({"prompt": prompt, "chosen": chosen, "rejected": rejected}, "pair", ENCODER)
    if isinstance(chosen, str) and isinstance(rejected, str) and chosen.strip() == rejected.strip():
        assert problems


@PROPERTY
@given(rows=st.lists(st.one_of(st.fixed_dictionaries({"prompt": anything, "response": anything}), anything),
                     max_size=20))
def test_skip_keeps_exactly_the_valid_rows_in_order(rows):
    valid = [r for r in rows if not row_problems(r, "sft", ENCODER)]
    if valid:
        assert validate_rows(rows, "sft", ENCODER, on_invalid="skip") == valid
    if len(valid) < len(rows):
        with pytest.raises(InvalidDataError) as err:
            validate_rows(rows, "sft", ENCODER)
        first_bad = next(i for i, r in enumerate(rows) if row_problems(r, "sft", ENCODER))
        assert f"row {first_bad}: " in str(err.value)
    else:
        assert validate_rows(rows, "sft", ENCODER) == rows


@PROPERTY
@given(prompt=anything)
def test_prompt_validator_never_crashes_and_rejects_non_text(prompt):
    problems = prompt_problems(prompt, ENCODER)
    if not isinstance(prompt, str) or not prompt.strip():
        assert problems


def test_a_prompts_length_is_counted_as_the_model_sees_it_under_the_chat_template():
    """The template's tokens count: a prompt whose text fits but whose templated form does not is
    refused (where a source applies no `data.truncate_prompts` of its own), and a message list is counted
    too."""
    from tests.real_assets import build_tokenizer as chat_tokenizer

    tok = chat_tokenizer(chat_template=True)
    prompt = "what color is the sky ?"
    encoder = Encoder(tok, max_prompt_tokens=8, max_response_tokens=8, append_eos=True, chat_template=True)
    assert len(tok(prompt, add_special_tokens=False)["input_ids"]) + 1 <= 8 < encoder.prompt_length(prompt)
    for value in (prompt, [{"role": "user", "content": prompt}]):
        assert prompt_problems(value, encoder) == [f"prompt has {encoder.prompt_length(prompt)} tokens, "
                                                   "over data.max_prompt_tokens=8"]
    assert prompt_problems(prompt, Encoder(tok, 8, 8, append_eos=True, chat_template=False)) == []
