"""Bad config values fail before any training, with a message that names the key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from rto.config import ConfigError, validate
from rto.main import train
from tests.conftest import compose_config


@pytest.mark.parametrize(("override", "key"), [
    ("beta=-1", "beta"),
    ("beta=abc", "beta"),
    ("ppo.clip_range=0", "ppo.clip_range"),
    ("ppo.gamma=1.5", "ppo.gamma"),
    ("sft.optimizer.lr=-0.1", "sft.optimizer.lr"),
    ("ppo.kl_estimator=k9", "ppo.kl_estimator"),
    ("stage=train", "stage"),
    ("dpo.beta=0", "dpo.beta"),
    ("ppo.minibatch_size=64", "ppo.minibatch_size"),
    ("eval.policies=[dpo,policy]", "eval.policies"),  # no SFT baseline for the win rate
    ("eval.policies=[sft,ppo]", "eval.policies"),
    ("eval.prompt_set=train", "eval.prompt_set"),
    ("cpu_prepack=true", "cpu_prepack"),  # a bare value in place of the group would read as off
    ("cpu_prepack.enabled=maybe", "cpu_prepack.enabled"),
    ("cpu_prepack.min_weight_elements=-1", "cpu_prepack.min_weight_elements"),
])
def test_out_of_range_value_names_the_key(tmp_path, override, key):
    cfg = compose_config(override, output_dir=tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists(), "nothing may train before the config is checked"


def test_unknown_reward_is_rejected_by_hydra_listing_the_options(tmp_path):
    with pytest.raises(ConfigCompositionException, match="reward"):
        compose_config("reward=dense", output_dir=tmp_path)


def test_typo_in_a_key_is_rejected(tmp_path):
    with pytest.raises(ConfigCompositionException, match="bta"):
        compose_config("bta=0.1", output_dir=tmp_path)


def test_dpo_beta_follows_beta_unless_set(tmp_path):
    assert compose_config("beta=0.3", output_dir=tmp_path).dpo.beta == 0.3
    assert compose_config("beta=0.3", "dpo.beta=0.05", output_dir=tmp_path).dpo.beta == 0.05


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_model_presets_are_valid(tmp_path, preset):
    validate(compose_config(f"model={preset}", output_dir=tmp_path))
