"""Rows of text -> `prompt (left-padded) + response (right-padded)` tensors.

Every stage uses this one layout: `prompt_ids/prompt_mask [B, P]`, `response_ids/response_mask [B, R]`.
Prompts longer than `max_prompt_tokens` lose their earliest text (the instruction's end is what the
model answers), but keep their frame: BOS, and under a chat template the turns' headers and the
generation prompt (whole earliest turns go first, then the start of the earliest turn left);
responses longer than `max_response_tokens` are cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from rto.data.preference_formats import Prompt, chat_prompt


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
    return ids, mask


@dataclass
class Encoder:
    """Tokenizes prompts and responses with the limits and special tokens of one run."""

    tokenizer: PreTrainedTokenizerBase
    max_prompt_tokens: int
    max_response_tokens: int
    # real data gets an EOS appended; the embedded task writes `<eos>` itself (or omits it on purpose)
    append_eos: bool = False

    # real data: a message-list prompt (or a string, as one user turn) goes through the chat template
    chat_template: bool = False
    # real text: a response after a plain-text prompt (no chat template in effect, e.g. HH's
    # "...\n\nAssistant:") is running text, tokenized as it follows that prompt (`response_tokens`)
    join_plain_prompts: bool = False
    # shortened prompts, by their full ids: a long prompt is shortened once, not at every batch (init=False:
    # an encoder copied for another tokenizer starts its own)
    _shortened: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def full_prompt(self, prompt: Prompt) -> list[int]:
        """Every token of the prompt, BOS first (once: a chat template may already write it)."""
        ids = _ids(self.tokenizer, chat_prompt(self.tokenizer, prompt, self.chat_template))
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def prompt_length(self, prompt: Prompt) -> int:
        return len(self.full_prompt(prompt))

    def prompt(self, prompt: Prompt) -> list[int]:
        ids = self.full_prompt(prompt)
        if len(ids) <= self.max_prompt_tokens:
            return ids
        key = tuple(ids)  # what the model would see: a string and its one-turn list differ without a template
        if key not in self._shortened:
            self._shortened[key] = self.shortened(prompt, ids)
        return self._shortened[key]

    def shortened(self, prompt: Prompt, ids: list[int]) -> list[int]:
        """A prompt over `max_prompt_tokens`, its earliest text cut, its frame kept."""
        bos = self.tokenizer.bos_token_id
        if isinstance(prompt, str) and not self.templated():  # plain text: BOS, then the text's last tokens
            head = [bos] if bos is not None and ids[:1] == [bos] else []
            return head + ids[len(ids) - (self.max_prompt_tokens - len(head)):]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        first = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
        while len(messages) - first > 1 and len(self.full_prompt(messages)) > self.max_prompt_tokens:
            del messages[first]  # whole earliest turns first, the last one stays;
            while len(messages) - first > 1 and messages[first]["role"] != "user":
                del messages[first]  # an exchange goes whole: templates may refuse to open on an answer
        kept = self.full_prompt(messages)
        if len(kept) <= self.max_prompt_tokens:
            return kept  # dropping turns was enough: the rest goes as written (no re-decoded text)
        if first < len(messages):
            content = _ids(self.tokenizer, messages[first]["content"])

            def keeping(k: int) -> list[dict]:  # the earliest turn's last k content tokens
                tail = self.tokenizer.decode(content[len(content) - k:]) if k else ""
                return messages[:first] + [{**messages[first], "content": tail}] + messages[first + 1:]

            low, high = 0, len(content)  # binary search: the most content tokens that fit
            while low < high:
                mid = (low + high + 1) // 2
                low, high = (mid, high) if len(self.full_prompt(keeping(mid))) <= self.max_prompt_tokens else (low, mid - 1)
            if low > 0:
                return self.full_prompt(keeping(low))
        # the frame alone fills the limit (a long system prompt, a tiny limit): the last tokens, as a last resort
        return ids[-self.max_prompt_tokens:]

    def templated(self) -> bool:
        """Prompts go through a chat template (asked for, and the tokenizer has one)."""
        return bool(self.chat_template and getattr(self.tokenizer, "chat_template", None))

    def joins(self) -> bool:
        """Responses follow their prompts as running text: real text, and no chat template in effect."""
        return self.join_plain_prompts and not self.templated()

    def frame(self, prompt: Prompt) -> str:
        """The prompt's text as the model sees it (the chat template's output, or the plain turns)."""
        return chat_prompt(self.tokenizer, prompt, self.chat_template)

    def responses_tokens(self, texts: Sequence[str], prompts: Sequence[Optional[Prompt]]) -> list[list[int]]:
        """Responses' tokens as they follow their prompts (three batched tokenizer calls at most). After
        a chat template's generation prompt (a role header, a newline) a response is tokenized on its
        own. After a plain-text prompt it is running text: "...Assistant:" then " I think", with the space
        a base model read there in pretraining (HH's transcripts have it; none before a response that
        opens with whitespace or closing punctuation), tokenized as part of the whole text and cut at
        the prompt's tokens, so the boundary is the tokenizer's own (byte-level BPE "ĠI", SentencePiece
        "▁I"). Tokenized apart, the response began "I", a token a base model rarely sees there."""
        texts = list(texts)
        out: list[Optional[list[int]]] = [None] * len(texts)
        rows = [(i, self.frame(p)) for i, p in enumerate(prompts) if p is not None and texts[i]] if self.joins() else []
        if rows:
            frames = list(dict.fromkeys(frame for _, frame in rows))
            heads = dict(zip(frames, self.tokenizer(frames, add_special_tokens=False)["input_ids"]))
            wholes = self.tokenizer([frame + _joiner(frame, texts[i]) + texts[i] for i, frame in rows],
                                    add_special_tokens=False)["input_ids"]
            for (i, frame), whole in zip(rows, wholes):
                head = heads[frame]
                if whole[:len(head)] == head:  # else the boundary merged: the response on its own, below
                    out[i] = whole[len(head):]
        alone = [i for i, ids in enumerate(out) if ids is None]  # no prompt to follow, or tokenized apart
        if alone:
            for i, ids in zip(alone, self.tokenizer([texts[i] for i in alone], add_special_tokens=False)["input_ids"]):
                out[i] = ids
        return out

    def response_tokens(self, text: str, prompt: Optional[Prompt] = None) -> list[int]:
        return self.responses_tokens([text], [prompt])[0]

    def with_eos(self, ids: list[int]) -> list[int]:
        """EOS appended (real data), then cut at `max_response_tokens`."""
        eos = self.tokenizer.eos_token_id
        if self.append_eos and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        return ids[:self.max_response_tokens]

    def responses(self, texts: Sequence[str], prompts: Sequence[Optional[Prompt]]) -> list[list[int]]:
        return [self.with_eos(ids) for ids in self.responses_tokens(texts, prompts)]

    def response(self, text: str, prompt: Optional[Prompt] = None) -> list[int]:
        return self.responses([text], [prompt])[0]

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


# a response opening with these follows its prompt without a space ("The movie was" + ", great")
NO_SPACE_BEFORE = ",.;:!?)]}"


def _joiner(frame: str, text: str) -> str:
    """What goes between a plain-text prompt and its response: one space, unless either side has one
    already or the response opens with closing punctuation."""
    return "" if not frame or frame[-1].isspace() or text[0].isspace() or text[0] in NO_SPACE_BEFORE else " "


def encode_prompts(encoder: Encoder, prompts: list[Prompt]) -> dict[str, torch.Tensor]:
    ids, mask = _left_pad([encoder.prompt(p) for p in prompts], encoder.pad_id)
    return {"prompt_ids": ids, "prompt_mask": mask}


class SFTCollator:
    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = encode_prompts(self.encoder, [r["prompt"] for r in rows])
        ids, mask = right_pad(self.encoder.responses([r["response"] for r in rows], [r["prompt"] for r in rows]),
                              self.encoder.pad_id)
        return {**batch, "response_ids": ids, "response_mask": mask}


class PairCollator:
    """Chosen rows first, then rejected rows: `[2B, ...]` so one forward scores both."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        prompts = [r["prompt"] for r in rows] * 2
        responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
        batch = encode_prompts(self.encoder, prompts)
        ids, mask = right_pad(self.encoder.responses(responses, prompts), self.encoder.pad_id)
        batch = {**batch, "response_ids": ids, "response_mask": mask}
        if all("ref_logps" in r for r in rows):  # precomputed by DPO's `precompute_ref`
            batch["ref_logps"] = torch.tensor([r["ref_logps"][0] for r in rows] + [r["ref_logps"][1] for r in rows])
        return batch


class PromptCollator:
    """Prompts for rollouts; the text travels along so the gold judge can read it."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def __call__(self, prompts: list[Prompt]) -> dict:
        return {**encode_prompts(self.encoder, prompts), "prompt_text": list(prompts)}
