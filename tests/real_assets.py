"""Small stand-ins for a real model and real preference sets, written the way users get them:
a Llama-architecture model and its tokenizer saved with `save_pretrained`, and preference files
in the UltraFeedback, HH-RLHF and plain schemas, written with `datasets` / pandas."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

COLORS = ["red", "blue", "green", "black", "white", "gray"]
THINGS = ["sky", "grass", "snow", "coal", "ash", "rose", "sea", "leaf", "milk", "ink", "smoke", "wine"]
WORDS = ["what", "color", "is", "the", "a", "i", "think", "it", "not", "sure", "maybe", "answer", "please",
         "thanks", "user", "assistant", "system", "human", ":", "?", "."] + COLORS + THINGS
# a ChatML-like template, as instruct models ship
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} : {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant : {% endif %}")


def build_tokenizer(chat_template: bool, extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer without a pad token (the pipeline must then use EOS as pad)."""
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + list(extra_words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def build_byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer as GPT-2, Pythia, Llama 3 and Qwen ship (a space belongs to the word
    after it: "ĠI"), no chat template: a base model's tokenizer."""
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [f"\n\nHuman: {p}\n\nAssistant: {c}" for p, c, _ in _triples(24)] + [" ".join(WORDS)]
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def save_tiny_llama(folder: Path, chat_template: bool = True, extra_words: tuple[str, ...] = (), **shape) -> Path:
    """`shape`: LlamaConfig fields that replace the defaults below (other widths, grouped keys and values,
    an untied LM head)."""
    tok = build_tokenizer(chat_template, extra_words)
    fields = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
              "intermediate_size": 64, "tie_word_embeddings": True, **shape}
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, **fields)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _triples(n: int) -> list[tuple[str, str, str]]:
    out = []
    for i in range(n):
        thing, color, wrong = THINGS[i % len(THINGS)], COLORS[i % len(COLORS)], COLORS[(i + 3) % len(COLORS)]
        out.append((f"what color is the {thing} ? {'please' if i >= len(THINGS) else ''}".strip(),
                    f"the {thing} is {color} .", f"i think it is {wrong} maybe"))
    return out


def write_preference_sets(folder: Path, n: int = 24) -> dict[str, Path]:
    """The same pairs in the three schemas: UltraFeedback JSONL, HH-RLHF JSONL, plain Parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    triples = _triples(n)
    ultra = pd.DataFrame([{
        "prompt": p,
        "chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
        "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
        "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
    } for p, c, r in triples])
    hh = pd.DataFrame([{"chosen": f"\n\nHuman: {p}\n\nAssistant: {c}", "rejected": f"\n\nHuman: {p}\n\nAssistant: {r}"}
                       for p, c, r in triples])
    plain = pd.DataFrame([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples])
    paths = {"ultrafeedback": folder / "ultra.jsonl", "hh_rlhf": folder / "hh.jsonl",
             "plain": folder / "plain.parquet"}
    ultra.to_json(paths["ultrafeedback"], orient="records", lines=True)
    hh.to_json(paths["hh_rlhf"], orient="records", lines=True)
    plain.to_parquet(paths["plain"])
    return paths


def save_tiny_gguf(folder: Path, vocab_size: int = 64, tokenizer: bool = False) -> Path:
    """A 2-layer Llama as a GGUF file (float32 tensors, llama.cpp's tensor names), `folder/tiny.gguf`:
    what transformers reads with `gguf_file=`, in milliseconds rather than SmolLM2's seconds.
    `tokenizer`: the file carries a byte-level BPE tokenizer too (every byte a token, no merges, ChatML
    specials and template, as SmolLM2's file does) and the vocabulary is its size, not `vocab_size`."""
    import gguf
    import numpy as np

    hidden, layers, heads, kv_heads, ffn = 32, 2, 4, 2, 64
    folder.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(folder / "tiny.gguf"), "llama")
    writer.add_name("tiny")
    if tokenizer:
        vocab_size = _add_byte_tokenizer(writer)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab_size)
    rng = np.random.default_rng(0)
    kv = kv_heads * hidden // heads
    shapes = {"token_embd.weight": (vocab_size, hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes.update({f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
                       f"blk.{i}.attn_q.weight": (hidden, hidden), f"blk.{i}.attn_k.weight": (kv, hidden),
                       f"blk.{i}.attn_v.weight": (kv, hidden), f"blk.{i}.attn_output.weight": (hidden, hidden),
                       f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden),
                       f"blk.{i}.ffn_down.weight": (hidden, ffn)})
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return folder


GGUF_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GGUF_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _add_byte_tokenizer(writer) -> int:
    """GPT-2's byte alphabet (256 tokens) and the ChatML specials (control tokens); the vocabulary size."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [bytes_to_unicode()[b] for b in range(256)] + GGUF_SPECIALS
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3] * len(GGUF_SPECIALS))  # 1 normal, 3 control
    writer.add_token_scores([0.0] * len(tokens))  # no merges: transformers derives none from single bytes
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(258)  # <|im_end|> ends an assistant turn, as in SmolLM2's file
    writer.add_add_bos_token(False)
    writer.add_chat_template(GGUF_CHAT_TEMPLATE)
    return len(tokens)
