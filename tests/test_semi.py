"""Semi-RTO: segments closed at sentence delimiters (`reward=semi`, the paper's), or fixed windows
under their own name (`reward=semi_window`, for the embedded task's language, which has no delimiters)."""

from __future__ import annotations

import pytest
import torch

from rto.config import ConfigError
from rto.main import train
from rto.rl.segments import DelimiterSegments, WindowSegments, closes_sentence
from tests.conftest import compose_config
from tests.real_assets import build_tokenizer

DEFAULT_DELIMITERS = [".", "!", "?", "\n"]


@pytest.mark.parametrize(("text", "closes"), [
    (".", True), (" ?", True), ("!", True), (".\n", True), ("\n\n", True), ("Mr.", True), ("...", True),
    (".com", False), (",", False), ("the", False), (" ", False), (":", False),
])
def test_a_token_closes_a_sentence_when_its_text_ends_with_a_delimiter(text, closes):
    assert closes_sentence(text, DEFAULT_DELIMITERS) is closes


def test_delimiter_segments_mark_the_delimiter_tokens_of_real_text():
    tok = build_tokenizer(chat_template=False)
    segments = DelimiterSegments(tok, DEFAULT_DELIMITERS)
    ids = torch.tensor([tok("the sky is blue . i think it is red ? maybe", add_special_tokens=False)["input_ids"]
                        + [tok.eos_token_id, tok.unk_token_id]])
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    ends = segments(ids, mask)[0].tolist()
    words = tok.convert_ids_to_tokens(ids[0].tolist())
    assert [w for w, e in zip(words, ends) if e] == [".", "?"]  # EOS is special; the masked slot is no end
    assert segments(torch.tensor([[10_000, -100]]), torch.ones(1, 2)).tolist() == [[False, False]]


def test_window_segments_every_nth_real_token():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    assert WindowSegments(2)(torch.zeros_like(mask), mask).long().tolist() == [[0, 1, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]]


def test_semi_on_the_embedded_language_is_refused_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match=r"no token of this tokenizer is one.*use reward=semi_window"):
        train(compose_config("reward=semi", output_dir=tmp_path))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("reward.segment_len=0", "reward.segment_len must be an integer >= 1, got 0"),
    ("reward.segment_len=-4", "reward.segment_len must be an integer >= 1, got -4"),
    ("reward.segment_len=2.5", "reward.segment_len must be an integer >= 1, got 2.5"),
])
def test_window_length_is_validated(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train(compose_config("reward=semi_window", override, output_dir=tmp_path))


@pytest.mark.parametrize("override", ["reward.delimiters=[]", "reward.delimiters=['.', '']"])
def test_delimiters_are_validated(tmp_path, override):
    with pytest.raises(ConfigError, match="reward.delimiters must be a non-empty list of non-empty strings"):
        train(compose_config("reward=semi", override, output_dir=tmp_path))
