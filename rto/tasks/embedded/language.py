"""The toy language of the embedded task: a fixed word vocabulary and its tokenizer.

One word is one token (WordLevel model, whitespace split), so a response's words, its token ids
and the gold reward's per-word terms line up one to one.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
# Pad and eos are distinct on purpose: a pad == eos setup hides end-of-response bugs.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)

TOPICS: dict[str, tuple[str, ...]] = {
    "animals": ("dog", "cat", "horse", "rabbit", "tiger", "lion", "wolf", "bear",
                "fox", "deer", "mouse", "owl", "eagle", "snake"),
    "food": ("bread", "cheese", "apple", "soup", "rice", "pasta", "salad", "cake",
             "butter", "honey", "pepper", "noodle", "pizza", "carrot"),
    "weather": ("rain", "snow", "wind", "cloud", "storm", "thunder", "fog", "sunshine",
                "hail", "breeze", "frost", "drizzle", "rainbow", "humid"),
    "sports": ("ball", "goal", "team", "coach", "match", "score", "tennis", "soccer",
               "runner", "stadium", "referee", "medal", "sprint", "racket"),
    "music": ("song", "guitar", "piano", "drum", "melody", "rhythm", "violin", "chorus",
              "singer", "concert", "tune", "bass", "harmony", "lyric"),
    "space": ("star", "planet", "moon", "rocket", "galaxy", "comet", "orbit", "astronaut",
              "nebula", "meteor", "telescope", "asteroid", "cosmos", "satellite"),
    "ocean": ("wave", "tide", "coral", "whale", "shark", "reef", "shell", "sailor",
              "dolphin", "seaweed", "harbor", "current", "squid", "anchor"),
    "city": ("street", "tower", "bridge", "subway", "taxi", "market", "plaza", "avenue",
             "traffic", "skyline", "museum", "cafe", "apartment", "bus"),
}

NEUTRAL_WORDS: tuple[str, ...] = (
    "the", "a", "and", "is", "was", "very", "quite", "some", "many", "this",
    "that", "with", "of", "on", "for", "it", "they", "we", "there", "here",
    "then", "also", "often", "really", "just", "so", "big", "small", "old", "new",
)

NEGATIVE_WORDS: tuple[str, ...] = (
    "bad", "awful", "hate", "terrible", "ugly", "boring", "stupid", "horrible",
    "worst", "nasty", "gross", "dull",
)

PROMPT_WORDS: tuple[str, ...] = ("write", "about", "in", "words", "mentioning", ":")

MIN_LENGTH, MAX_LENGTH = 4, 12
NUMBER_WORDS: tuple[str, ...] = tuple(str(n) for n in range(MIN_LENGTH, MAX_LENGTH + 1))

# The topic names themselves are prompt vocabulary, not on-topic content words.
TOPIC_NAMES: tuple[str, ...] = tuple(TOPICS)

WORD_TO_TOPIC: dict[str, str] = {w: t for t, words in TOPICS.items() for w in words}


def vocabulary() -> list[str]:
    """All tokens, specials first so that their ids are 0..3 whatever the word lists hold."""
    words = [*SPECIAL_TOKENS, *PROMPT_WORDS, *NUMBER_WORDS, *TOPIC_NAMES,
             *(w for ws in TOPICS.values() for w in ws), *NEUTRAL_WORDS, *NEGATIVE_WORDS]
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
        raise ValueError(f"words listed in more than one category: {duplicates}")
    return words


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A real `transformers` tokenizer for the toy language.

    Left padding because prompts are padded for batched generation. No post-processor: whether a
    sequence starts with `<bos>` is the collator's decision, not the tokenizer's.
    """
    vocab = {w: i for i, w in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
    )
