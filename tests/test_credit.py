"""The credit-assignment metric (rto/credit.py) against numbers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rto.credit import aligned_gold, average_ranks, credit_correlation, credit_pairs, pearson, spearman
from rto.tasks.embedded import build_tokenizer, gold_token_rewards

PROMPT = "write about food in 5 words mentioning cake :"


def test_correlations_by_hand():
    # x = 1..4, y = 1,3,2,4: deviations (-1.5,-.5,.5,1.5) and (-1.5,.5,-.5,1.5), products sum to 4,
    # squares to 5 each: r = 4/5; the values are their own ranks, so rho = r
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # Spearman is Pearson on ranks: a monotone but non-linear relation has rho = 1 and r < 1
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 10, 100, 1000]) < 0.9


def test_ties_share_the_mean_rank():
    assert average_ranks([1.0, 1.0, 2.0]).tolist() == [1.5, 1.5, 3.0]
    assert average_ranks([3.0, 1.0, 3.0, 3.0, 0.0]).tolist() == [4.0, 2.0, 4.0, 4.0, 1.0]
    # ranks (1.5, 1.5, 3) against (1, 2, 3): deviations (-.5,-.5,1), (-1,0,1); 1.5 / sqrt(1.5 * 2)
    assert spearman([1, 1, 2], [0, 1, 2]) == pytest.approx(1.5 / math.sqrt(3.0))


def test_agrees_with_scipy_on_random_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 200).astype(float), rng.normal(size=200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_constant_side_has_no_correlation():
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [0, 0, 0]))


def test_tokens_pair_with_words_eos_and_padding_left_out():
    """`cake dog bad the <eos>` + one pad: gold per word 3 (on topic + keyword), -1 (off topic),
    -2 (negative), 0 (neutral); `<eos>` and the pad slot are not paired."""
    tok = build_tokenizer()
    ids = tok("cake dog bad the <eos> <pad>", add_special_tokens=False)["input_ids"]
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    ratios = torch.tensor([[0.5, -0.2, -1.0, 0.1, 9.0, 7.0]])
    x, y = credit_pairs([PROMPT], torch.tensor([ids]), mask, ratios, tok, gold_token_rewards)
    assert x.tolist() == pytest.approx([0.5, -0.2, -1.0, 0.1])
    assert y.tolist() == [3.0, -1.0, -2.0, 0.0]
    metrics = credit_correlation(x, y)
    # ranks agree exactly; Pearson: dx = (.65, -.05, -.85, .25), dy = (3, -1, -2, 0):
    # 3.7 / sqrt(1.21 * 14)
    assert metrics["spearman"] == pytest.approx(1.0)
    assert metrics["pearson"] == pytest.approx(3.7 / math.sqrt(1.21 * 14))
    assert metrics["tokens"] == 4


def test_response_without_eos_keeps_its_last_word():
    tok = build_tokenizer()
    ids = tok("cake cake", add_special_tokens=False)["input_ids"]
    x, y = credit_pairs([PROMPT], torch.tensor([ids]), torch.ones(1, 2), torch.tensor([[1.0, 2.0]]), tok,
                        gold_token_rewards)
    assert y.tolist() == [3.0, 1.0]  # the keyword bonus once, then on-topic
    assert x.tolist() == [1.0, 2.0]


def test_subword_tokenizer_is_refused():
    vocab = {"<eos>": 0, "ca": 1, "##ke": 2, "dog": 3}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders
    backend.decoder = decoders.WordPiece()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    with pytest.raises(ValueError, match="word-level tokenizer"):
        aligned_gold(tok, PROMPT, [1, 2, 3], gold_token_rewards)
