"""Real preference sets -> the pipeline's rows `{"prompt", "chosen", "rejected"}`.

Schemas understood (`data.format`):
- `ultrafeedback`: UltraFeedback-binarized style, `chosen` / `rejected` are message lists
  (`[{"role", "content"}, ...]`) that share every message but the last assistant turn;
- `hh_rlhf`: Anthropic HH style, `chosen` / `rejected` are transcripts
  `"\\n\\nHuman: ...\\n\\nAssistant: ..."` sharing everything up to the last `Assistant:`;
- `plain`: `prompt` / `chosen` / `rejected` columns of strings (a message list is accepted for
  the prompt, and a response may be a message list whose last message is the answer).

A prompt is kept as a message list when the source has turns (the `Encoder` applies the model's
chat template to it) and as a string otherwise. A row that does not fit its schema raises
`RowError` naming the row number, or is skipped and counted when `data.on_invalid=skip`.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Iterable, Union

from rto.data.tables import UnreadableRow
from rto.errors import DataError

log = logging.getLogger(__name__)

Prompt = Union[str, list[dict]]
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class RowError(DataError):
    """A row that does not fit its schema (or a line that cannot be parsed); the message names the
    source and row number (or the file and line) and the problem."""


# ---- one schema per function: a raw row -> {"prompt", "chosen", "rejected"} ---------------------------
def _messages(value: Any, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what} must be a non-empty list of messages, got {type(value).__name__}")
    for message in value:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{what} must hold {{'role', 'content'}} messages, got {message!r:.80}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _answer(value: Any, what: str) -> str:
    """A response given as a string, or as messages whose last one is the assistant's answer."""
    if isinstance(value, list):
        last = _messages(value, what)[-1]
        if last["role"] != "assistant":
            raise ValueError(f"{what}: the last message must be the assistant's, got role {last['role']!r}")
        return last["content"]
    return _text(value, what)


def ultrafeedback_row(row: dict) -> dict:
    chosen, rejected = _messages(row.get("chosen"), "chosen"), _messages(row.get("rejected"), "rejected")
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise ValueError(f"{name} must end with an assistant message after at least one user message")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected must share every message but the last")
    return {"prompt": chosen[:-1], "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}


def split_hh(transcript: str) -> tuple[list[dict], str]:
    """`"\\n\\nHuman: a\\n\\nAssistant: b"` -> (prompt messages, final assistant answer)."""
    parts = HH_TURN.split(transcript)
    if len(parts) < 3 or parts[-2] != "Assistant":
        raise ValueError("an HH transcript must be '\\n\\nHuman: ...\\n\\nAssistant: ...' ending with an Assistant turn")
    turns = [{"role": HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]
    return turns[:-1], turns[-1]["content"]


def hh_rlhf_row(row: dict) -> dict:
    chosen_prompt, chosen = split_hh(_text(row.get("chosen"), "chosen"))
    rejected_prompt, rejected = split_hh(_text(row.get("rejected"), "rejected"))
    if chosen_prompt != rejected_prompt:
        raise ValueError("chosen and rejected must share the transcript up to the last 'Assistant:'")
    return {"prompt": chosen_prompt, "chosen": chosen, "rejected": rejected}


def plain_row(row: dict, prompt_column: str = "prompt") -> dict:
    prompt = row.get(prompt_column)
    prompt = _messages(prompt, prompt_column) if isinstance(prompt, list) else _text(prompt, prompt_column)
    return {"prompt": prompt, "chosen": _answer(row.get("chosen"), "chosen"),
            "rejected": _answer(row.get("rejected"), "rejected")}


def sft_row(row: dict, prompt_column: str = "prompt") -> dict:
    """An SFT demonstration: `messages` (last one the answer), or a prompt with `response`,
    `completion` or `chosen`."""
    if "messages" in row and row["messages"] is not None:
        messages = _messages(row["messages"], "messages")
        return {"prompt": messages[:-1], "response": _answer(messages, "messages")}
    prompt = row.get(prompt_column)
    prompt = _messages(prompt, prompt_column) if isinstance(prompt, list) else _text(prompt, prompt_column)
    for column in ("response", "completion", "chosen"):
        if row.get(column) is not None:
            return {"prompt": prompt, "response": _answer(row[column], column)}
    raise ValueError("an SFT row needs `messages`, or a prompt with `response`, `completion` or `chosen`")


def prompt_row(row: dict, prompt_column: str = "prompt") -> Prompt:
    """An RL prompt: a string, or messages (a trailing assistant answer is dropped)."""
    prompt = row.get(prompt_column)
    if isinstance(prompt, list):
        messages = _messages(prompt, prompt_column)
        return messages[:-1] if messages[-1]["role"] == "assistant" and len(messages) > 1 else messages
    return _text(prompt, prompt_column)


FORMATS: dict[str, Callable[..., dict]] = {"ultrafeedback": ultrafeedback_row, "hh_rlhf": hh_rlhf_row,
                                           "plain": plain_row}


def convert_rows(rows: Iterable[dict], convert: Callable[[dict], Any], source: str, on_invalid: str) -> list:
    """Apply a schema converter to every row; a bad row raises `RowError` with its number, or is
    skipped and counted (`on_invalid=skip`)."""
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"data.on_invalid must be raise or skip, got {on_invalid!r}")
    out, skipped, unreadable = [], 0, []
    for index, row in enumerate(rows):
        if isinstance(row, UnreadableRow):  # a line of a local file that could not be parsed
            if on_invalid == "raise":
                raise RowError(f"{row} (set data.on_invalid=skip to skip such lines)")
            skipped += 1
            unreadable.append(row.where)
            continue
        try:
            out.append(convert(row))
        except (ValueError, KeyError, TypeError) as err:
            if on_invalid == "raise":
                raise RowError(f"{source}: row {index}: {err} (set data.on_invalid=skip to drop such rows)") from err
            skipped += 1
    if skipped:
        places = list(dict.fromkeys(unreadable))  # a Parquet row group counts each of its rows
        lines = f" ({len(unreadable)} unreadable: {', '.join(places[:5])}{', ...' if len(places) > 5 else ''})" \
            if unreadable else ""
        log.warning("%s: skipped %d of %d malformed rows%s", source, skipped, skipped + len(out), lines)
    return out


def chat_prompt(tokenizer, prompt: Prompt, use_template: bool = True) -> str:
    """The prompt text the model sees: the tokenizer's chat template (with the generation prompt)
    applied to a message list when it has one, else the turns joined as plain text."""
    if isinstance(prompt, str):
        if use_template and getattr(tokenizer, "chat_template", None):
            prompt = [{"role": "user", "content": prompt}]
        else:
            return prompt
    if use_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    text = "".join(f"\n\n{names.get(m['role'], m['role'])}: {m['content']}" for m in prompt)
    return text + "\n\nAssistant:"


def prompt_key(prompt: Prompt) -> str:
    """A hashable key of a prompt, to de-duplicate and hold prompts out. A string is keyed as the one
    user turn it becomes under the chat template, so the same question held out in one form (say test
    prompts as text) is held out in the other (SFT rows from `messages`) too."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)
