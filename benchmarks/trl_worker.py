"""TRL's side of `vs_trl.py`, run in TRL's own virtualenv (never imports rto).

    benchmarks/.venv-trl/bin/python benchmarks/trl_worker.py ppo SPEC.json       # TRL 0.23.1 PPOTrainer
    benchmarks/.venv-trl/bin/python benchmarks/trl_worker.py ppo_smollm2 SPEC.json   # the same on SmolLM2 + LoRA
    benchmarks/.venv-trl-dpo/bin/python benchmarks/trl_worker.py dpo SPEC.json   # current TRL DPOTrainer
    benchmarks/.venv-trl-dpo/bin/python benchmarks/trl_worker.py dpo_precomputed SPEC.json  # precompute_ref_log_probs
    benchmarks/.venv-trl-dpo/bin/python benchmarks/trl_worker.py grpo|rloo SPEC.json   # current TRL GRPOTrainer / RLOOTrainer

Everything TRL lets us set to the benchmark's shapes is set; the rest stays at TRL's defaults.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast,
                          TrainerCallback)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_clock import StepClock  # noqa: E402


class Tick(TrainerCallback):
    def __init__(self, clock: StepClock):
        self.clock = clock

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.tick()


def common_args(spec: dict, out: str) -> dict:
    return {"output_dir": out, "report_to": "none", "use_cpu": True, "seed": spec["seed"], "save_strategy": "no",
            "logging_steps": 1, "dataloader_num_workers": 0, "disable_tqdm": True, "bf16": bool(spec.get("trl_bf16")), "fp16": False,
            "torch_compile": bool(spec.get("trl_compile"))}  # Trainer's torch.compile of the trained model


def ppo_trainer(spec: dict, tok, out: str, clock: StepClock):
    from trl import PPOConfig, PPOTrainer

    prompts = json.loads(Path(spec["prompts"]).read_text())
    # our collator prepends BOS to every prompt: the same tokens here
    rows = [{"input_ids": [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    args = PPOConfig(
        **common_args(spec, out),
        per_device_train_batch_size=spec["rollout_batch_size"], gradient_accumulation_steps=1,
        num_mini_batches=spec["rollout_batch_size"] // spec["minibatch_size"], num_ppo_epochs=spec["ppo_epochs"],
        response_length=spec["max_new_tokens"], local_rollout_forward_batch_size=spec["rollout_batch_size"],
        total_episodes=spec["total_steps"] * spec["rollout_batch_size"], num_sample_generations=0,
        stop_token="eos", temperature=1.0, kl_coef=0.1, kl_estimator="k1", learning_rate=5e-4)

    def scalar():
        return AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=1)

    return PPOTrainer(args=args, processing_class=tok, model=AutoModelForCausalLM.from_pretrained(spec["model"]),
                      ref_model=AutoModelForCausalLM.from_pretrained(spec["model"]), reward_model=scalar(),
                      value_model=scalar(), train_dataset=Dataset.from_list(rows * 4), callbacks=[Tick(clock)])


def lora_config(spec: dict, task_type: str):
    from peft import LoraConfig

    lora = spec["lora"]
    return LoraConfig(r=int(lora["r"]), lora_alpha=float(lora["alpha"]), lora_dropout=float(lora.get("dropout", 0.0)),
                      target_modules=lora.get("target_modules", "all-linear"), task_type=task_type, bias="none")


def forced_length_check(expected: int) -> None:
    """Fail if TRL's rollout is not `expected` new tokens long (the work both sides must do: no stop token)."""
    from trl.trainer import ppo_trainer

    generate = ppo_trainer.batch_generation

    def checked(model, queries, *args, **kwargs):
        query_responses, logits = generate(model, queries, *args, **kwargs)
        if query_responses.shape[1] - queries.shape[1] != expected:
            raise RuntimeError(f"TRL sampled {query_responses.shape[1] - queries.shape[1]} new tokens, not {expected}")
        return query_responses, logits
    ppo_trainer.batch_generation = checked


def ppo_smollm2_trainer(spec: dict, out: str, clock: StepClock):
    """TRL 0.23.1's PPOTrainer with peft, as its documentation sets it up: the policy gets the LoRA
    (`peft_config`), the reference is the policy with its adapter disabled (`ref_model=None`), the
    reward model and the value model are sequence classifiers on the same backbone. Like our critic,
    the value model gets the same LoRA on its backbone (its head trains fully); like our reward model,
    the reward model has none. Responses run to `response_length` (no stop token), as ours."""
    from peft import TaskType, get_peft_model
    from trl import PPOConfig, PPOTrainer

    # the tokenizer as our side saved it (its tokenizer_config is a newer transformers'): the plain file
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(spec["tokenizer"]) / "tokenizer.json"), padding_side="left")
    tok.pad_token = tok.convert_ids_to_tokens(spec["trl_pad_id"])  # TRL finds padding by id: one no prompt holds
    tok.eos_token = tok.convert_ids_to_tokens(spec["eos_id"])  # only TRL's metrics read it (no stop token)
    prompt_ids = json.loads(Path(spec["prompt_ids"]).read_text())
    load = {"torch_dtype": torch.float32, **({"gguf_file": spec["gguf_file"]} if spec["gguf_file"] else {})}
    policy = AutoModelForCausalLM.from_pretrained(spec["model_dir"], **load)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1, **load)
    for model in (policy, reward):
        model.config.pad_token_id = tok.pad_token_id
    value = copy.deepcopy(reward)  # its own weights, as our critic (the reward model's copy) has
    value.model = get_peft_model(value.model, lora_config(spec, TaskType.FEATURE_EXTRACTION))
    batch = spec["rollout_batch_size"]
    args = PPOConfig(
        **common_args(spec, out),
        per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_mini_batches=batch // spec["minibatch_size"], num_ppo_epochs=spec["ppo_epochs"],
        response_length=spec["max_new_tokens"], local_rollout_forward_batch_size=batch,
        total_episodes=spec["total_steps"] * batch, num_sample_generations=0,
        stop_token=None, stop_token_id=None, missing_eos_penalty=None,
        temperature=1.0, kl_coef=spec["beta"], kl_estimator="k1", learning_rate=spec["learning_rate"])
    forced_length_check(spec["max_new_tokens"])
    # exactly one batch of prompts: every (shuffled) batch holds the same prompts, as on our side
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         value_model=value, train_dataset=Dataset.from_list([{"input_ids": ids} for ids in prompt_ids]),
                         peft_config=lora_config(spec, TaskType.CAUSAL_LM), callbacks=[Tick(clock)])
    trained = {name: sum(p.numel() for p in getattr(trainer.model, name).parameters() if p.requires_grad)
               for name in ("policy", "value_model")}
    print(f"trainable parameters: {trained}; reference: the policy's adapter disabled "
          f"({trainer.ref_model is None and trainer.is_peft_model})", file=sys.stderr, flush=True)
    return trainer


def dpo_trainer(spec: dict, tok, out: str, clock: StepClock, precompute: bool):
    from trl import DPOConfig, DPOTrainer

    pairs = json.loads(Path(spec["pairs"]).read_text())
    # TRL appends EOS to chosen/rejected; we prepend BOS to prompts (our collator does): same tokens
    rows = [{**p, "prompt": tok.bos_token + " " + p["prompt"]} for p in pairs]
    n_rows = spec["total_steps"] * spec["dpo_pairs"]
    rows = (rows * (n_rows // len(rows) + 1))[:n_rows]
    args = DPOConfig(**common_args(spec, out), per_device_train_batch_size=spec["dpo_pairs"],
                     max_steps=spec["total_steps"], learning_rate=1e-3, beta=0.1, lr_scheduler_type="constant",
                     weight_decay=0.0, precompute_ref_log_probs=precompute)
    return DPOTrainer(model=AutoModelForCausalLM.from_pretrained(spec["model"]),
                      ref_model=AutoModelForCausalLM.from_pretrained(spec["model"]), args=args,
                      train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Tick(clock)])


def group_trainer(spec: dict, tok, out: str, clock: StepClock, kind: str):
    """GRPOTrainer / RLOOTrainer at our critic-free iteration's work: `rollout_batch_size` completions
    per step (`group_size` per prompt), one update pass on them as one batch (num_iterations=1), a
    reference model and the KL (beta > 0: GRPO's k3 loss term, RLOO's k1 in the reward), the reward
    model loaded from the same checkpoint, temperature 1 without top-k/top-p, dropout off."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config, trainer = (GRPOConfig, GRPOTrainer) if kind == "grpo" else (RLOOConfig, RLOOTrainer)
    prompts = json.loads(Path(spec["prompts"]).read_text())
    # our collator prepends BOS to every prompt: the same tokens here (TRL adds no special token)
    rows = [{"prompt": tok.bos_token + " " + p} for p in prompts]
    extra = {"loss_type": "dapo", "scale_rewards": "group"} if kind == "grpo" else {"normalize_advantages": False}
    args = config(
        **common_args(spec, out), per_device_train_batch_size=spec["rollout_batch_size"],
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=spec["group_size"],
        num_iterations=1, beta=0.1, max_completion_length=spec["max_new_tokens"], temperature=1.0, top_p=1.0,
        top_k=0, max_steps=spec["total_steps"], learning_rate=5e-4, lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=1.0, disable_dropout=True, log_completions=False, gradient_checkpointing=False, **extra)
    scorer = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=1)
    scorer.config.pad_token_id = tok.pad_token_id
    return trainer(model=AutoModelForCausalLM.from_pretrained(spec["model"]), reward_funcs=scorer, args=args,
                   train_dataset=Dataset.from_list(rows), processing_class=tok, reward_processing_classes=tok,
                   callbacks=[Tick(clock)])


def main() -> None:
    work, spec = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        if work == "ppo_smollm2":
            trainer = ppo_smollm2_trainer(spec, out, clock)
        else:
            # the folder was written by a newer transformers: load the tokenizer file by its plain class
            tok = PreTrainedTokenizerFast.from_pretrained(spec["model"], padding_side="left")
            if work == "ppo":
                trainer = ppo_trainer(spec, tok, out, clock)
            elif work in ("grpo", "rloo"):
                trainer = group_trainer(spec, tok, out, clock, work)
            else:
                trainer = dpo_trainer(spec, tok, out, clock, precompute=work == "dpo_precomputed")
        print("@@READY", flush=True)
        clock.wait_for_command()
        # `--trl-autocast`: the whole iteration under bf16 autocast. TRL 0.23.1's `bf16=True` alone puts only
        # its update's forwards under autocast (Accelerate wraps the prepared policy-and-value wrapper's
        # forward); generation, the reference, the rollout's values and the reward model stay fp32
        everywhere = torch.autocast("cpu", dtype=torch.bfloat16) if spec.get("trl_autocast") else contextlib.nullcontext()
        with everywhere:
            trainer.train()


if __name__ == "__main__":
    main()
