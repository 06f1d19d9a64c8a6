"""Pretrained weights are read once per process (`rto.models.pretrained_cache`): later loads are copies
with the same numbers; LoRA models share the frozen base weights, fully trained models get their own,
and no training stage ever writes into the cached or shared weights."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from peft import TaskType
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM

from rto.context import RunContext
from rto.main import train
from rto.models import factory, pretrained_cache
from rto.models.critic import save_critic
from rto.models.factory import build_policy, load_policy, save_policy
from rto.models.lora import add_lora
from rto.models.reward import new_critic
from rto.models.scalar_head import ScalarHeadModel
from rto.recipes import evaluation
from tests.conftest import compose_config
from tests.real_assets import build_tokenizer, save_tiny_gguf, write_preference_sets

pytest.importorskip("gguf", reason="transformers reads GGUF files with the gguf package")

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
LORA_OVERRIDE = "{r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}"


@pytest.fixture
def reads(monkeypatch):
    """A fresh cache, and the files transformers is asked to read: (loader, gguf_file) per call."""
    pretrained_cache.clear()
    pretrained_cache.share_frozen_weights(True)
    calls = []
    read = factory._from_pretrained

    def counted(loader, source, **kwargs):
        calls.append((loader.__name__, kwargs.get("gguf_file")))
        return read(loader, source, **kwargs)
    monkeypatch.setattr(factory, "_from_pretrained", counted)
    yield calls
    pretrained_cache.clear()


@pytest.fixture
def gguf_model(tmp_path, reads):
    """The model preset of a tiny GGUF file (no tokenizer in it: the tests bring one)."""
    folder = save_tiny_gguf(tmp_path / "gguf", vocab_size=len(build_tokenizer(chat_template=False)))

    def model_cfg(lora=None):
        return OmegaConf.create({"pretrained": str(folder), "gguf_file": "tiny.gguf", "dtype": "float32",
                                 "trust_remote_code": False, "gradient_checkpointing": False, "lora": lora})
    return model_cfg, reads, folder


def _base_weights(model) -> dict[str, torch.nn.Parameter]:
    """Every weight but LoRA's, by its name in the plain transformers model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name.replace(".base_layer", ""): p for name, p in base.named_parameters() if "lora_" not in name}


def _fresh(loader, folder):
    """The file read by transformers itself, past the cache."""
    return loader.from_pretrained(str(folder), gguf_file="tiny.gguf", dtype=torch.float32)


def _assert_same_weights(model, reference, what):
    expected = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), (what, name)


def test_later_loads_read_nothing_and_give_the_same_numbers(gguf_model, tmp_path):
    model_cfg, reads, folder = gguf_model
    tok = build_tokenizer(chat_template=False)
    sft = build_policy(model_cfg(LORA), tok)
    save_policy(sft, tok, tmp_path / "sft")
    actor = load_policy(tmp_path / "sft", model_cfg(LORA))
    dpo = load_policy(tmp_path / "sft", model_cfg(LORA))
    full = build_policy(model_cfg(None), tok)
    assert reads == [("AutoModelForCausalLM", "tiny.gguf")]  # the DPO model, the actor, a full model: no read
    ids = torch.randint(len(tok), (2, 7))
    expected = _fresh(AutoModelForCausalLM, folder)(input_ids=ids).logits
    for model in (sft, actor, dpo, full):
        assert torch.equal(model.eval()(input_ids=ids).logits, expected)


def test_lora_models_share_the_base_and_full_models_own_theirs(gguf_model, tmp_path):
    model_cfg, _, _ = gguf_model
    tok = build_tokenizer(chat_template=False)
    sft = build_policy(model_cfg(LORA), tok)
    save_policy(sft, tok, tmp_path / "sft")
    actor = load_policy(tmp_path / "sft", model_cfg(LORA))
    for name, p in _base_weights(actor).items():
        assert p is _base_weights(sft)[name], name  # one set of base weights (a move to a GPU moves it once)
        assert not p.requires_grad
    full = build_policy(model_cfg(None), tok)
    assert full.lm_head.weight is full.model.embed_tokens.weight  # tied weights stay tied in a copy
    assert all(p.requires_grad for p in full.parameters())  # trainable, though the LoRA bases froze the template
    assert not {p.data_ptr() for p in _base_weights(full).values()} & {p.data_ptr() for p in _base_weights(sft).values()}
    # training the full model leaves the LoRA models' (and later loads') base weights as they were
    before = {name: p.detach().clone() for name, p in _base_weights(actor).items()}
    optimizer = torch.optim.SGD(full.parameters(), lr=1.0)
    ids = torch.randint(len(tok), (2, 5))
    full.train()(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(_base_weights(full)[name], before[name])
    for name, p in _base_weights(actor).items():
        assert torch.equal(p, before[name]), name
    later = build_policy(model_cfg(None), tok)
    for name, p in _base_weights(later).items():
        assert torch.equal(p, before[name]), name
    # under FSDP nothing is shared: each LoRA model gets its own base
    pretrained_cache.share_frozen_weights(False)
    own = load_policy(tmp_path / "sft", model_cfg(LORA))
    assert not {p.data_ptr() for p in _base_weights(own).values()} & {p.data_ptr() for p in _base_weights(sft).values()}


@pytest.mark.parametrize("trainer, shares", [("fsdp", False), ("ddp", True), ("cpu", True)])
def test_fsdp_turns_sharing_off(tmp_path, trainer, shares):
    """A job's context decides, from its trainer, whether frozen copies share their template's weights."""
    pretrained_cache.share_frozen_weights(not shares)
    try:
        RunContext(compose_config(f"trainer={trainer}", output_dir=tmp_path))
        assert pretrained_cache.shares_frozen_weights() is shares
    finally:
        pretrained_cache.share_frozen_weights(True)  # the process's default, for the tests after this one


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_lora_critic_shares_the_reward_models_backbone_and_never_writes_into_it(tmp_path, reads, dtype):
    folder = save_tiny_gguf(tmp_path / "gguf", vocab_size=len(build_tokenizer(chat_template=False)))
    tok = build_tokenizer(chat_template=False)
    rm = ScalarHeadModel(pretrained_cache.dense(_fresh(AutoModel, folder)).to(dtype))
    rm.save_pretrained(tmp_path / "rm")
    rm_cfg = OmegaConf.create({"source": "pretrained", "path": str(folder), "critic_init": "rm", "lora": LORA,
                               "gradient_checkpointing": False})
    critic = new_critic(rm_cfg, OmegaConf.create({}), tmp_path / "rm", tmp_path / "sft", tok, tok, reward_model=rm)
    assert ScalarHeadModel.from_pretrained(tmp_path / "rm").backbone.dtype == dtype  # what it would read back
    for name, p in rm.backbone.named_parameters():
        assert p is _base_weights(critic.backbone)[name], name
    before = {name: t.clone() for name, t in rm.state_dict().items()}
    # a critic step (LoRA and head), then the critic saved with its LoRA merged
    optimizer = torch.optim.SGD([p for p in critic.parameters() if p.requires_grad], lr=1.0)
    ids = torch.randint(len(tok), (2, 6))
    mask = torch.ones_like(ids)
    critic.response_values(ids[:, :3], mask[:, :3], ids[:, 3:], mask[:, 3:]).pow(2).sum().backward()
    optimizer.step()
    save_critic(tmp_path / "critic", critic, tok, None, None)
    for name, tensor in rm.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # the reward model is as it was
    # a reward model that differs from its folder (its LoRA not merged, as on a rank that did not save
    # it): the critic is read from the folder
    rm.backbone = add_lora(rm.backbone, OmegaConf.create(LORA), TaskType.FEATURE_EXTRACTION)
    own = new_critic(rm_cfg, OmegaConf.create({}), tmp_path / "rm", tmp_path / "sft", tok, tok, reward_model=rm)
    assert not {p.data_ptr() for p in own.parameters()} & {p.data_ptr() for p in rm.parameters()}
    # what was saved is the trained critic, merged: the same values as the critic in memory
    saved = ScalarHeadModel.from_pretrained(tmp_path / "critic")
    assert not torch.equal(saved.head.weight, rm.head.weight)
    close = {} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}  # merged in bf16: rounded once more
    torch.testing.assert_close(saved.eval().response_values(ids[:, :3], mask[:, :3], ids[:, 3:], mask[:, 3:]),
                               critic.eval().response_values(ids[:, :3], mask[:, :3], ids[:, 3:], mask[:, 3:]), **close)


def test_a_whole_run_reads_each_file_once_and_leaves_the_cached_weights_as_read(tmp_path, reads, monkeypatch):
    """SFT, RM, DPO, PPO and eval on a GGUF policy with LoRA and a LoRA reward model from the same
    GGUF file: each (file, loader) is read once, and after every stage trained (the reward model's
    LoRA merged when saved, the critic trained on the reward model's backbone and saved), the cached
    weights equal the file's and the reward model that evaluation reads is the one saved."""
    folder = save_tiny_gguf(tmp_path / "gguf", tokenizer=True)
    data = write_preference_sets(tmp_path / "data")["plain"]
    evaluated = {}
    evaluate = evaluation.evaluate

    def spy(policies, reference, scorer, *args, **kwargs):
        evaluated["rm"] = {name: t.clone() for name, t in scorer.model.state_dict().items()}
        return evaluate(policies, reference, scorer, *args, **kwargs)
    monkeypatch.setattr(evaluation, "evaluate", spy)
    cfg = compose_config("model=hf", f"model.pretrained={folder}", "model.gguf_file=tiny.gguf",
                         f"model.lora={LORA_OVERRIDE}", "data=jsonl", f"data.path={data}", "data.sft_path=null",
                         "data.test_split=null", "data.max_prompt_tokens=64", "data.max_response_tokens=32",
                         "data.n_test_prompts=4", "data.test_prompt_fraction=0.2", "data.val_prompt_fraction=0.1",
                         "data.val_fraction=0.2", "reward=token", "reward_model=pretrained",
                         f"reward_model.path={folder}", "reward_model.gguf_file=tiny.gguf",
                         f"reward_model.lora={LORA_OVERRIDE}", "ppo.max_new_tokens=8", "eval.max_new_tokens=8",
                         output_dir=tmp_path / "run")
    train(cfg)
    assert sorted(reads) == [("AutoModel", "tiny.gguf"), ("AutoModelForCausalLM", "tiny.gguf"),
                             ("AutoTokenizer", "tiny.gguf")]
    models = {key[0]: t for key, t in pretrained_cache._TEMPLATES.items() if isinstance(t, torch.nn.Module)}
    assert set(models) == {"AutoModel", "AutoModelForCausalLM"}
    for name, template in models.items():
        _assert_same_weights(template, _fresh({"AutoModel": AutoModel,
                                               "AutoModelForCausalLM": AutoModelForCausalLM}[name], folder), name)
    saved = tmp_path / "run" / "checkpoints"
    assert (saved / "critic" / "scalar_head.safetensors").exists()
    rm = load_file(str(saved / "rm" / "model.safetensors"))
    for name, tensor in rm.items():
        assert torch.equal(evaluated["rm"][f"backbone.{name}"], tensor), name
