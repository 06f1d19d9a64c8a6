"""A GGUF file is parsed once per process (`rto.models.gguf_cache`): later loads are copies with the
same numbers; LoRA models share the frozen base weights, fully trained models get their own."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from rto.models import gguf_cache
from rto.models.factory import build_policy, load_policy, save_policy
from tests.real_assets import build_tokenizer, save_tiny_gguf

pytest.importorskip("gguf", reason="transformers reads GGUF files with the gguf package")
from transformers import modeling_gguf_pytorch_utils  # noqa: E402

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


@pytest.fixture
def gguf_model(tmp_path, monkeypatch):
    """The model preset of a tiny GGUF file, a fresh cache, and a counter of transformers' GGUF parses."""
    folder = save_tiny_gguf(tmp_path / "gguf", vocab_size=len(build_tokenizer(chat_template=False)))
    gguf_cache.clear()
    parses = []
    parse = modeling_gguf_pytorch_utils.load_gguf_checkpoint

    def counted(*args, **kwargs):
        parses.append(kwargs.get("return_tensors", False))
        return parse(*args, **kwargs)
    monkeypatch.setattr(modeling_gguf_pytorch_utils, "load_gguf_checkpoint", counted)

    def model_cfg(lora=None):
        return OmegaConf.create({"pretrained": str(folder), "gguf_file": "tiny.gguf", "dtype": "float32",
                                 "trust_remote_code": False, "gradient_checkpointing": False, "lora": lora})
    yield model_cfg, parses, folder
    gguf_cache.clear()


def _base_weights(model) -> dict[str, torch.nn.Parameter]:
    """Every weight but LoRA's, by its name in the plain transformers model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name.replace(".base_layer", ""): p for name, p in base.named_parameters() if "lora_" not in name}


def test_later_loads_parse_nothing_and_give_the_same_numbers(gguf_model, tmp_path):
    model_cfg, parses, folder = gguf_model
    tok = build_tokenizer(chat_template=False)
    sft = build_policy(model_cfg(LORA), tok)
    first_parses = len(parses)
    assert first_parses >= 1
    save_policy(sft, tok, tmp_path / "sft")
    actor = load_policy(tmp_path / "sft", model_cfg(LORA))
    dpo = load_policy(tmp_path / "sft", model_cfg(LORA))
    assert len(parses) == first_parses  # the DPO model and the actor: no parse
    fresh = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file="tiny.gguf", dtype=torch.float32)
    ids = torch.randint(len(tok), (2, 7))
    expected = fresh(input_ids=ids).logits
    for model in (sft, actor, dpo):
        assert torch.equal(model.eval()(input_ids=ids).logits, expected)


def test_lora_models_share_the_base_and_full_models_own_theirs(gguf_model, tmp_path):
    model_cfg, _, _ = gguf_model
    tok = build_tokenizer(chat_template=False)
    sft = build_policy(model_cfg(LORA), tok)
    save_policy(sft, tok, tmp_path / "sft")
    actor = load_policy(tmp_path / "sft", model_cfg(LORA))
    for name, p in _base_weights(actor).items():
        assert p.data_ptr() == _base_weights(sft)[name].data_ptr(), name  # one copy of the base
        assert not p.requires_grad
    full = build_policy(model_cfg(None), tok)
    assert full.lm_head.weight is full.model.embed_tokens.weight  # tied weights stay tied in a copy
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
