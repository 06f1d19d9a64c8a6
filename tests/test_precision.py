"""`trainer.precision=bf16-mixed` on a CPU: the same numbers as autocast with bf16 copies of the weights
that do not change (`rto.models.precision`), the scalar heads in fp32, and every stage of a run (pairs,
DPO's precomputed reference, the rollouts, the validation curve, evaluation) computing in bf16, with
fp32 checkpoints at the end. The PPO ratio at the first minibatch: tests/test_rl_numbers.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from rto.main import train
from rto.models.factory import load_policy, load_tokenizer
from rto.models.lora import add_lora
from rto.models.placement import off_step, off_step_device, off_step_precision
from rto.models.precision import lowered_linears, precision_problem
from rto.models.scalar_head import ScalarHeadModel
from rto.rl.rollout import sample_responses
from tests.conftest import compose_config
from tests.real_assets import save_tiny_llama
from tests.test_rl_numbers import TOLERANCE, first_minibatch  # noqa: F401 - a fixture

LORA = "model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}"
AUTOCAST = dict(device_type="cpu", dtype=torch.bfloat16, cache_enabled=False)  # as Lightning's bf16-mixed


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("chat") / "llama")


def lora_policy(folder: Path):
    """A LoRA model on the tiny Llama (tied embeddings) with a trained-looking adapter (B != 0)."""
    cfg = OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    model = add_lora(load_policy(folder, OmegaConf.create({"dtype": "float32"})), cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    return model.eval()


def test_precision_values_beyond_fp32_and_bf16_mixed_are_refused_by_name():
    for ok in ("32-true", "32", 32, "bf16-mixed", "bf16"):
        assert precision_problem(ok) is None
    for bad in ("bf16-true", "16-mixed", "16-true", "64-true", "transformer-engine"):
        assert f"got '{bad}'" in precision_problem(bad)
    assert "model.dtype=bf16" in precision_problem("bf16-true")


def test_work_outside_training_steps_runs_on_the_runs_device_in_its_precision(chat_model, monkeypatch):
    """Pairs sampling, DPO's precomputed reference and evaluation: on the CPU in a CPU run's precision;
    on a CUDA run on the process's GPU (Lightning's LOCAL_RANK), where a CPU-only torch cannot go."""
    cpu, gpu = OmegaConf.create({"accelerator": "cpu", "precision": "bf16"}), OmegaConf.create(
        {"accelerator": "gpu", "precision": "bf16-mixed"})
    assert off_step_device(cpu).type == "cpu"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert off_step_device(gpu) == torch.device("cuda", 0) and off_step_device(cpu).type == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's DDP launcher: the rank's own GPU
    assert off_step_device(gpu) == torch.device("cuda", 1)
    assert off_step_device(OmegaConf.merge(gpu, {"devices": [2, 3]})) == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_LOCALID", "2")  # srun sets no LOCAL_RANK
    assert off_step_device(OmegaConf.merge(gpu, {"devices": 4})) == torch.device("cuda", 2)
    monkeypatch.delenv("SLURM_LOCALID")
    assert off_step_device(OmegaConf.merge(gpu, {"devices": "1,"})) == torch.device("cuda", 1)  # GPU 1 alone
    mps = OmegaConf.create({"accelerator": "mps", "precision": "bf16-mixed"})
    assert off_step_device(mps).type == "cpu" and off_step_precision(mps, torch.device("cpu")) == "32-true"
    assert off_step_precision(cpu, torch.device("cpu")) == "bf16-mixed"
    monkeypatch.undo()
    model = lora_policy(chat_model)
    with off_step(cpu, model, None, model) as device:
        assert device.type == "cpu" and torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    with off_step(OmegaConf.create({"accelerator": "cpu", "precision": "32-true"}), model):
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_copies_of_the_weights_give_autocasts_numbers_bit_for_bit_and_go_back(chat_model):
    model = lora_policy(chat_model)
    tok = load_tokenizer(OmegaConf.create({"pretrained": str(chat_model)}))
    ids = torch.randint(5, len(tok), (4, 9))
    mask = torch.ones_like(ids)
    before = dict(model.named_parameters())
    embedding = model.get_input_embeddings().weight

    def run():
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        tokens = sample_responses(model, ids, mask, 6, -1, tok.pad_token_id, 0.9,
                                  torch.Generator().manual_seed(1), return_logprobs=True)
        return logits, *tokens

    with torch.autocast(**AUTOCAST):
        expected = run()
        assert expected[0].dtype == torch.bfloat16  # the LM head ran in bf16
        for trainable in (False, True, None):  # frozen weights, trainable ones, all
            with lowered_linears([model], torch.bfloat16, trainable=trainable) as n:
                assert n > 0
                for got, want in zip(run(), expected):
                    assert torch.equal(got, want), trainable
    # the update: frozen weights lowered, the adapter's gradients are autocast's too
    def adapter_grads():
        model.zero_grad()
        with torch.autocast(**AUTOCAST):
            model(input_ids=ids, attention_mask=mask).logits.float().logsumexp(-1).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    expected_grads = adapter_grads()
    with lowered_linears([model], torch.bfloat16, trainable=False):
        grads = adapter_grads()
    assert grads.keys() == expected_grads.keys() and all(torch.equal(grads[k], expected_grads[k]) for k in grads)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # the originals, fp32
    assert all(p.dtype == torch.float32 for p in after.values())
    assert model.get_output_embeddings().weight is embedding  # still tied


def test_scalar_heads_stay_fp32_under_autocast(chat_model):
    critic = ScalarHeadModel.from_causal_lm(lora_policy(chat_model)).eval()
    ids = torch.randint(5, 20, (3, 7))
    mask = torch.ones_like(ids)
    positions = torch.arange(7).expand(3, 7)
    with torch.no_grad(), torch.autocast(**AUTOCAST):
        hidden = critic.backbone(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        values = critic(ids, mask, positions)
    assert hidden.dtype == torch.float32  # the residual stream (embedding + bf16 blocks) stays fp32
    with torch.no_grad():
        fp32_head = torch.nn.functional.linear(hidden, critic.head.weight, critic.head.bias).squeeze(-1)
    assert torch.equal(values, fp32_head)  # not rounded to bf16


def test_every_stage_computes_in_bf16_and_the_checkpoints_stay_fp32(chat_model, tmp_path, monkeypatch, first_minibatch):
    """The sentiment chain (pairs sampled from SFT) with LoRA, DPO's reference precomputed and the
    validation curve on: everything outside Lightning's training steps runs under autocast too; the
    rollout samples with bf16 weights (frozen base for the stage, the adapter for the rollout), the update
    trains the fp32 adapter on the bf16 base, and starts where the rollout left it (ratio 1, old values)."""
    import rto.evaluation
    from rto.stages import dpo, learner, update
    from rto.tasks.sentiment import sampling as pairs_sampling

    seen: dict[str, list] = {}

    def spy(owner, name, where):
        original = getattr(owner, name)

        def recorded(*args, **kwargs):
            model = args[0]
            weights = {kind: {p.dtype for n, p in model.named_parameters() if ("lora_" in n) == (kind == "lora")
                              and p.dim() == 2 and "embed" not in n} for kind in ("lora", "base")}
            seen.setdefault(where, []).append((torch.is_autocast_enabled("cpu"), weights))
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, recorded)

    spy(pairs_sampling, "sample_responses", "pairs")
    spy(dpo, "sequence_logps", "dpo")
    spy(learner, "sample_responses", "rollout")
    spy(update, "policy_logprobs", "update")  # the minibatch update's forward
    spy(rto.evaluation, "sample_responses", "eval and validation")
    cfg = compose_config("model=hf", f"model.pretrained={chat_model}", LORA, "data=sentiment", "sft.epochs=0",
                         "pairs.n_prompts=16", "data.n_train_prompts=16", "data.n_val_prompts=4",
                         "data.n_test_prompts=4", "data.max_response_tokens=8", "data.val_fraction=0.25",
                         "dpo.precompute_ref=true", "ppo.val_every=1", "ppo.val_prompts=2",
                         "trainer.precision=bf16-mixed", output_dir=tmp_path)
    train(cfg)
    assert set(seen) == {"pairs", "dpo", "rollout", "update", "eval and validation"}
    for where, calls in seen.items():
        assert all(autocast for autocast, _ in calls), where
    bf16, fp32 = {torch.bfloat16}, {torch.float32}
    assert all(w == {"lora": bf16, "base": bf16} for _, w in seen["rollout"])   # sampling: all bf16
    assert all(w == {"lora": fp32, "base": bf16} for _, w in seen["update"])    # training: fp32 adapter
    assert any(w["base"] == bf16 for _, w in seen["eval and validation"])
    assert first_minibatch["ratio"] <= TOLERANCE and first_minibatch["values"] <= TOLERANCE
    checkpoints = tmp_path / "checkpoints"
    for weights in (checkpoints / "ppo" / "adapter_model.safetensors", checkpoints / "rm" / "model.safetensors"):
        assert {t.dtype for t in load_file(str(weights)).values()} == {torch.float32}, weights
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert -3.0 <= metrics["eval/policy/gold_reward"] <= 1.0


def test_attention_runs_in_fp32_under_cpu_bf16_autocast_and_gradients_flow(chat_model, monkeypatch):
    """torch's bf16 attention backward is slow on a CPU: `rto.models.cpu_attention` runs attention in
    fp32 under a CPU's bf16 autocast (the linear layers stay bf16) and leaves every other call alone."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    policy = lora_policy(chat_model).train()
    ids = torch.randint(5, 20, (2, 6))
    with torch.autocast(**AUTOCAST):
        logits = policy(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert seen and all(dtypes == (torch.float32,) * 3 for dtypes in seen)
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.parameters() if p.requires_grad)
    seen.clear()
    policy(input_ids=ids, attention_mask=torch.ones_like(ids))  # fp32 run: untouched
    assert seen and all(dtypes == (torch.float32,) * 3 for dtypes in seen)
