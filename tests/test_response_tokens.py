"""A response after a plain-text prompt (a base model's HH frame, "...\\n\\nAssistant:") is tokenized as
running text after it, as the whole transcript would be; after a chat template's generation prompt, and
on the embedded task, on its own as before."""

from __future__ import annotations

import pytest

from rto.data.collate import Encoder, SFTCollator, encode_prompts
from rto.data.preference_formats import FORMATS, chat_prompt
from tests.real_assets import build_byte_level_tokenizer, build_tokenizer

HH = {"chosen": "\n\nHuman: what color is the sky ?\n\nAssistant: the sky is blue .",
      "rejected": "\n\nHuman: what color is the sky ?\n\nAssistant: i think it is red maybe"}


@pytest.fixture(scope="module")
def tok():
    return build_byte_level_tokenizer()


def test_hh_response_is_tokenized_as_in_the_whole_transcript(tok):
    row = FORMATS["hh_rlhf"](HH)
    encoder = Encoder(tok, 64, 32, append_eos=True, chat_template=True, join_plain_prompts=True)
    batch = SFTCollator(encoder)([{"prompt": row["prompt"], "response": row["chosen"]}])
    prompt = batch["prompt_ids"][0][batch["prompt_mask"][0].bool()].tolist()
    response = batch["response_ids"][0][batch["response_mask"][0].bool()].tolist()
    whole = tok(HH["chosen"], add_special_tokens=False)["input_ids"]
    assert prompt[0] == tok.bos_token_id and prompt[1:] + response == whole + [tok.eos_token_id]
    assert tok.decode(response[:1]).startswith(" ")  # "Ġthe", the word a base model reads after "Assistant:"
    # the policy's sampled response, decoded (with its leading space) and encoded again: the same tokens
    assert encoder.response(tok.decode(response[:-1]), row["prompt"]) == response


def test_a_plain_text_prompt_is_joined_by_one_space(tok):
    encoder = Encoder(tok, 64, 32, append_eos=False, join_plain_prompts=True)
    ids = encoder.response("the sky is blue .", "what color is the sky ?")
    assert ids == tok("what color is the sky ? the sky is blue .", add_special_tokens=False)["input_ids"][
        len(tok("what color is the sky ?", add_special_tokens=False)["input_ids"]):]


def test_responses_after_a_chat_template_or_on_the_embedded_task_are_tokenized_alone(tok):
    templated = build_tokenizer(chat_template=True)
    for encoder in (Encoder(templated, 64, 32, append_eos=True, chat_template=True, join_plain_prompts=True),
                    Encoder(tok, 64, 32)):  # the embedded task's encoder does not join
        prompt = [{"role": "user", "content": "what color is the sky ?"}]
        assert encoder.response("the sky is blue .", prompt) == \
            encoder.tokenizer("the sky is blue .", add_special_tokens=False)["input_ids"] + \
            ([encoder.tokenizer.eos_token_id] if encoder.append_eos else [])
    assert chat_prompt(templated, "x").startswith("<|im_start|>")


def test_real_preference_data_joins_responses_to_plain_prompts(tok, tmp_path):
    """The HH preset on a base model's tokenizer (no chat template): the data bundle's encoder joins."""
    from rto.data.sources import load_data
    from tests.conftest import compose_config
    from tests.real_assets import write_preference_sets

    path = write_preference_sets(tmp_path / "data")["hh_rlhf"]
    cfg = compose_config("data=hh_rlhf", f"data.path={path}", "data.sft_path=null", "data.test_split=null",
                         "data.n_test_prompts=4", "data.test_prompt_fraction=0.2", "data.val_prompt_fraction=0.1",
                         output_dir=tmp_path)
    bundle = load_data(cfg.data, tok)
    for row in bundle.sft_rows:
        frame = chat_prompt(tok, row["prompt"])
        whole = tok(frame + " " + row["response"], add_special_tokens=False)["input_ids"]
        head = tok(frame, add_special_tokens=False)["input_ids"]
        assert bundle.encoder.response(row["response"], row["prompt"]) == whole[len(head):] + [tok.eos_token_id]


def test_a_reward_model_with_a_base_tokenizer_reads_responses_as_running_text(tok):
    """Responses re-tokenized for a reward model of another (no-template) tokenizer join its prompt frame too."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    from rto.models.retokenize import RewardScorer
    from rto.models.scalar_head import ScalarHeadModel

    policy_tok = build_tokenizer(chat_template=True)
    policy_tok.pad_token = policy_tok.eos_token
    prompts = [[{"role": "user", "content": "what color is the sky ?"}]]
    policy = Encoder(policy_tok, 32, 12, append_eos=True, chat_template=True, join_plain_prompts=True)
    batch = SFTCollator(policy)([{"prompt": prompts[0], "response": "the sky is blue ."}])
    rm = ScalarHeadModel(LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32)))
    scorer = RewardScorer(rm, Encoder(tok, 64, 32, append_eos=True, chat_template=True, join_plain_prompts=True),
                          policy_tok)
    frame = chat_prompt(tok, prompts[0])
    whole, head = (tok(t, add_special_tokens=False)["input_ids"] for t in (frame + " the sky is blue .", frame))
    expected = whole[len(head):] + [tok.eos_token_id]
    assert scorer.response_ids(batch["response_ids"], batch["response_mask"], prompts) == [expected]
    direct = encode_prompts(scorer.encoder, prompts)
    torch.testing.assert_close(scorer.score(**batch, prompt_text=prompts),
                               rm.eval().score(**direct, response_ids=torch.tensor([expected]),
                                               response_mask=torch.ones(1, len(expected), dtype=torch.long)))


def test_a_completion_opening_with_punctuation_gets_no_space(tok):
    encoder = Encoder(tok, 64, 32, join_plain_prompts=True)
    head = tok("the sky is", add_special_tokens=False)["input_ids"]
    assert encoder.response_tokens(", blue .", "the sky is") == \
        tok("the sky is, blue .", add_special_tokens=False)["input_ids"][len(head):]


def test_validation_counts_a_response_as_the_collator_tokenizes_it(tok):
    """The length check counts the joined tokens: "please ..." alone is several pieces (no "please" in
    this vocabulary), after "Assistant:" it is one "Ġplease"; a limit that fits the joined tokens passes,
    one token less is refused."""
    from rto.data.validate import InvalidDataError, validate_rows

    prompt = [{"role": "user", "content": "what color is the sky ?"}]
    row = {"prompt": prompt, "response": "please the sky is blue ."}
    probe = Encoder(tok, 64, 64, append_eos=True, chat_template=True, join_plain_prompts=True)
    joined = len(probe.response(row["response"], prompt))
    assert joined < len(tok(row["response"], add_special_tokens=False)["input_ids"]) + 1
    fits = Encoder(tok, 64, joined, append_eos=True, chat_template=True, join_plain_prompts=True)
    assert validate_rows([row], "sft", fits) == [row]
    short = Encoder(tok, 64, joined - 1, append_eos=True, chat_template=True, join_plain_prompts=True)
    with pytest.raises(InvalidDataError, match="over data.max_response_tokens"):
        validate_rows([row], "sft", short)
