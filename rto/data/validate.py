"""Row validation before any training: every source's rows go through here (`load_data`).

A row is rejected for a missing field, a field that is not text, an empty (or blank) text, a
preference pair whose chosen and rejected responses are the same, or a text longer than the
run's token limits (which the collators would otherwise cut silently), but where the source cuts
them on purpose: prompts under `data.truncate_prompts`, responses under `data.truncate_responses`
(both counted and logged). `data.on_invalid=raise`
stops with the row numbers and reasons; `skip` drops the rows and logs how many, and why.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from functools import partial
from collections import Counter
from collections.abc import Mapping
from typing import Any, Callable, Optional

from rto.data.collate import Encoder
from rto.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FIELDS = {"sft": ("prompt", "response"), "pair": ("prompt", "chosen", "rejected")}
RESPONSE_FIELDS = ("response", "chosen", "rejected")
MAX_LISTED = 10


# Every list of rows in a DataBundle is a set that must hold rows (a new set is checked without
# listing it here): at least MIN_ROWS of them, 1 unless listed; OPTIONAL_SETS may be empty.
OPTIONAL_SETS = ("val_pairs",)  # data.val_fraction=0: no held-out pairs, no RM accuracy reported
MIN_ROWS = {"val_prompts": 2, "test_prompts": 2}  # an evaluation's ± is a standard error: two samples at least
# the data.* keys that size each set (shown with their values); what an empty set would break
SIZE_KEYS = {"sft_rows": ("n_sft", "sft_path", "limit"), "train_pairs": ("n_pairs", "val_fraction", "path", "limit"),
             "train_prompts": ("n_train_prompts", "prompts_path", "limit"),
             "val_prompts": ("n_val_prompts", "val_prompt_fraction"),
             "test_prompts": ("n_test_prompts", "test_prompt_fraction", "test_path", "test_split")}
USES = {"sft_rows": "SFT would train on nothing", "train_pairs": "the reward model and DPO would train on nothing",
        "train_prompts": "PPO would have no prompts",
        "val_prompts": "tuning and the validation curve need a standard error, so two prompts",
        "test_prompts": "a standard error needs two prompts"}


class InvalidDataError(DataError):
    """Rows that cannot be trained on; the message lists row numbers and reasons."""


class EmptySetError(DataError):
    """A set of rows (SFT rows, preference pairs, prompts) that is empty, or too small to use."""


def _ids(encoder: Encoder, text: str, tokenized: Optional[dict] = None) -> list[int]:
    if tokenized is not None and text in tokenized:
        return tokenized[text]
    return encoder.tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_all(encoder: Encoder, texts) -> dict:
    """One batched tokenizer call for many rows (per-row calls dominate validation time)."""
    texts = list(dict.fromkeys(t for t in texts if isinstance(t, str)))
    return dict(zip(texts, encoder.tokenizer(texts, add_special_tokens=False)["input_ids"])) if texts else {}


def usable_prompt(row: Any):
    """The row's prompt if it is a well-formed one (text, or messages with text), else None."""
    prompt = row.get("prompt") if isinstance(row, Mapping) else None
    return prompt if prompt is not None and not text_problem("prompt", prompt) else None


def tokenize_responses(encoder: Encoder, rows: list, fields: tuple[str, ...]) -> dict:
    """Responses as they follow their prompts, `(frame, text) -> ids`, batched: where the encoder joins
    a response to a plain-text prompt (`Encoder.joins`), its count is that of the joined tokens."""
    pairs = list(dict.fromkeys((encoder.frame(prompt), r[f]) for r in rows if (prompt := usable_prompt(r)) is not None
                               for f in fields if isinstance(r.get(f), str)))
    # a frame stands for its prompt: without a template in effect a text prompt is its own frame
    ids = encoder.responses_tokens([text for _, text in pairs], [frame for frame, _ in pairs])
    return dict(zip(pairs, ids))


def prompt_tokens(encoder: Encoder, text: str, tokenized: Optional[dict] = None) -> int:
    """Token count of a prompt as the collator builds it (BOS included), before truncation."""
    return len(_ids(encoder, text, tokenized)) + (encoder.tokenizer.bos_token_id is not None)


def response_tokens(encoder: Encoder, text: str, tokenized: Optional[dict] = None, prompt=None) -> int:
    """Token count of a response as the collator builds it, after its prompt (`Encoder.responses_tokens`;
    appended EOS included), before truncation."""
    if encoder.joins() and prompt is not None:
        key = (encoder.frame(prompt), text)
        ids = tokenized[key] if tokenized is not None and key in tokenized else encoder.response_tokens(text, prompt)
    else:
        ids = _ids(encoder, text, tokenized)
    eos = encoder.tokenizer.eos_token_id
    return len(ids) + (encoder.append_eos and (not ids or ids[-1] != eos))


def messages_problem(field: str, value: list) -> Optional[str]:
    """A chat prompt: a non-empty list of {role, content} messages whose contents are text."""
    if not value:
        return f"{field} is an empty message list"
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            return f"{field} message {i} is not a {{role, content}} mapping with text content"
        if "\x00" in message["content"]:
            return f"{field} message {i} contains a NUL byte (binary content?)"
    return None


def text_problem(field: str, value: Any) -> Optional[str]:
    if field == "prompt" and isinstance(value, list):
        return messages_problem(field, value)
    if not isinstance(value, str):
        return f"{field} is not text ({type(value).__name__})"
    if not value.strip():
        return f"{field} is empty"
    if "\x00" in value:
        return f"{field} contains a NUL byte (binary content?)"
    return None


def length_problem(field: str, value: str, encoder: Optional[Encoder], tokenized: Optional[dict] = None,
                   check_prompt_length: bool = True, check_response_length: bool = True,
                   prompt=None) -> Optional[str]:
    if encoder is None or (field != "prompt" and not check_response_length):
        return None
    if field == "prompt":
        if not check_prompt_length:
            return None  # the source applied its own `data.truncate_prompts` policy to these
        # as the model sees it: under a chat template (or for a message list) the encoder's own count
        n = prompt_tokens(encoder, value, tokenized) if isinstance(value, str) and not encoder.chat_template \
            else encoder.prompt_length(value)
        limit, key = encoder.max_prompt_tokens, "data.max_prompt_tokens"
    else:
        n, limit = response_tokens(encoder, value, tokenized, prompt), encoder.max_response_tokens
        key = "data.max_response_tokens"
    return f"{field} has {n} tokens, over {key}={limit}" if n > limit else None


def row_problems(row: Any, kind: str, encoder: Optional[Encoder] = None, tokenized: Optional[dict] = None,
                 check_prompt_length: bool = True, check_response_length: bool = True) -> list[str]:
    """Why `row` (an `sft` or `pair` row) cannot be used; empty if it can."""
    if not isinstance(row, Mapping):
        return [f"row is a {type(row).__name__}, expected a mapping with fields {', '.join(FIELDS[kind])}"]
    problems = []
    for field in FIELDS[kind]:
        if field not in row or row[field] is None:
            problems.append(f"missing field {field!r}")
            continue
        prompt = usable_prompt(row) if field in RESPONSE_FIELDS else None
        problem = text_problem(field, row[field]) or \
            length_problem(field, row[field], encoder, tokenized, check_prompt_length, check_response_length, prompt)
        if problem:
            problems.append(problem)
    if kind == "pair" and not problems and row["chosen"].strip() == row["rejected"].strip():
        problems.append("chosen and rejected are identical")
    return problems


def prompt_problems(prompt: Any, encoder: Optional[Encoder] = None, tokenized: Optional[dict] = None,
                    check_prompt_length: bool = True) -> list[str]:
    problem = text_problem("prompt", prompt)
    if problem is None:
        problem = length_problem("prompt", prompt, encoder, tokenized, check_prompt_length)
    return [problem] if problem else []


def validate_rows(rows: list, kind: str, encoder: Optional[Encoder] = None, on_invalid: str = "raise",
                  name: str = "rows", check_prompt_length: bool = True, truncate_responses: bool = False) -> list:
    """The rows that pass; raise InvalidDataError (`on_invalid=raise`) or drop the rest (`skip`).

    `kind`: `sft`, `pair` or `prompt`. Row numbers in messages are 0-based positions in `rows`.
    `truncate_responses`: a response over `max_response_tokens` is no error; the encoder cuts it there
    (without its EOS), and how many were cut is logged.
    """
    tokenized = None
    if encoder is not None:
        # a joined response is counted with its prompt (`tokenize_responses`), not on its own
        joined = tuple(f for f in FIELDS[kind] if f in RESPONSE_FIELDS) if encoder.joins() and kind != "prompt" else ()
        texts = rows if kind == "prompt" else \
            (r.get(f) for r in rows if isinstance(r, Mapping) for f in FIELDS[kind] if f not in joined)
        tokenized = tokenize_all(encoder, texts)
        if joined:
            tokenized.update(tokenize_responses(encoder, rows, joined))
    check: Callable[[Any], list[str]] = \
        (lambda r: prompt_problems(r, encoder, tokenized, check_prompt_length)) if kind == "prompt" \
        else (lambda r: row_problems(r, kind, encoder, tokenized, check_prompt_length, not truncate_responses))
    bad = [(i, problems) for i, row in enumerate(rows) if (problems := check(row))]
    if truncate_responses and encoder is not None and kind != "prompt":
        log_cut_responses(rows, kind, encoder, tokenized, name)
    if not bad:
        return list(rows)
    reasons = Counter(re.sub(r"\d+", "N", p) for _, problems in bad for p in problems)
    summary = "; ".join(f"{reason}: {count}" for reason, count in reasons.most_common())
    if on_invalid == "skip":
        log.warning("%s: skipping %d of %d invalid rows (%s)", name, len(bad), len(rows), summary)
        dropped = {i for i, _ in bad}
        kept = [row for i, row in enumerate(rows) if i not in dropped]
        if not kept:
            raise InvalidDataError(f"{name}: every one of the {len(rows)} rows is invalid ({summary})")
        return kept
    listed = "\n  ".join(f"row {i}: {'; '.join(problems)}" for i, problems in bad[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    raise InvalidDataError(
        f"{name}: {len(bad)} of {len(rows)} rows are invalid ({summary}); fix them, or set data.on_invalid=skip "
        f"to drop them (row numbers are 0-based):\n  {listed}{more}")


def log_cut_responses(rows: list, kind: str, encoder: Encoder, tokenized: Optional[dict], name: str) -> None:
    fields = [f for f in FIELDS[kind] if f in RESPONSE_FIELDS]
    texts = [(r[f], usable_prompt(r)) for r in rows if isinstance(r, Mapping) for f in fields if isinstance(r.get(f), str)]
    cut = sum(response_tokens(encoder, text, tokenized, prompt) > encoder.max_response_tokens for text, prompt in texts)
    if cut:
        log.warning("%s: %d of %d responses exceed data.max_response_tokens=%d and are cut there (without "
                    "their EOS; data.truncate_responses=true)", name, cut, len(texts), encoder.max_response_tokens)


def validate_bundle(bundle, on_invalid: str = "raise", check_prompt_length: bool = True,
                    truncate_responses: bool = False):
    """Validate every row set of a DataBundle in place (SFT rows, preference pairs, prompts).
    `check_prompt_length=False` where the source already truncated or dropped long prompts;
    `truncate_responses`: long responses are cut and counted, not rejected."""
    check = partial(validate_rows, encoder=bundle.encoder, on_invalid=on_invalid,
                    check_prompt_length=check_prompt_length, truncate_responses=truncate_responses)
    bundle.sft_rows = check(bundle.sft_rows, "sft", name="sft rows")
    bundle.train_pairs = check(bundle.train_pairs, "pair", name="preference pairs (train)")
    bundle.val_pairs = check(bundle.val_pairs, "pair", name="preference pairs (val)") \
        if bundle.val_pairs else bundle.val_pairs
    bundle.train_prompts = check(bundle.train_prompts, "prompt", name="train prompts")
    bundle.val_prompts = check(bundle.val_prompts, "prompt", name="validation prompts")
    bundle.test_prompts = check(bundle.test_prompts, "prompt", name="test prompts")
    return bundle


def apply_prompt_limit(rows: list, prompt_of, encoder: Encoder, policy: str, what: str) -> list:
    """Count prompts over `max_prompt_tokens`; keep them (the encoder cuts their earliest text) or drop them."""
    if policy not in ("left", "drop"):
        raise ConfigError(f"data.truncate_prompts must be left or drop, got {policy!r}")
    too_long = [encoder.prompt_length(prompt_of(row)) > encoder.max_prompt_tokens for row in rows]
    n_long = int(sum(too_long))
    if n_long:
        action = "dropped" if policy == "drop" else "truncated from the left"
        log.warning("%s: %d of %d prompts exceed data.max_prompt_tokens=%d and are %s",
                    what, n_long, len(rows), encoder.max_prompt_tokens, action)
    return [row for row, long in zip(rows, too_long) if not long] if policy == "drop" else rows


def validation_options(data_cfg) -> dict:
    """How a data config's rows are validated: `on_invalid`, prompt lengths checked unless the source
    applies its own `data.truncate_prompts`, long responses cut under `data.truncate_responses`."""
    return {"on_invalid": data_cfg.get("on_invalid", "raise"), "check_prompt_length": "truncate_prompts" not in data_cfg,
            "truncate_responses": bool(data_cfg.get("truncate_responses", False))}


def validate_pairs_for(bundle, encoder: Encoder, data_cfg, whose: str) -> None:
    """The preference pairs again, in another tokenizer's tokens (a reward model with its own): its
    collator applies the same limits, so a response longer in its tokens would be cut there silently.
    Long responses are refused, or cut and counted (`data.truncate_responses`); prompts over the limit
    are counted (the encoder cuts their earliest text, as under `data.truncate_prompts=left`)."""
    options = validation_options(data_cfg)
    bundle.train_pairs = validate_rows(bundle.train_pairs, "pair", encoder, name=f"preference pairs (train, {whose})",
                                       **options)
    if bundle.val_pairs:
        bundle.val_pairs = validate_rows(bundle.val_pairs, "pair", encoder, name=f"preference pairs (val, {whose})",
                                         **options)
    if not options["check_prompt_length"]:  # counted only: the encoder keeps them, whatever the policy
        apply_prompt_limit(bundle.train_pairs + bundle.val_pairs, lambda r: r["prompt"], encoder, "left",
                           f"preference pairs ({whose})")


def check_set_sizes(bundle, data_cfg) -> None:
    """Stop before training when a set of the bundle is empty (or below its minimum), naming the set
    and the `data.*` keys that size it: training on nothing would finish and print a table as if all
    went well."""
    for field in dataclasses.fields(bundle):
        rows = getattr(bundle, field.name)
        if not isinstance(rows, list) or field.name in OPTIONAL_SETS or field.name in getattr(bundle, "deferred", ()):
            continue
        need = MIN_ROWS.get(field.name, 1)
        if len(rows) >= need:
            continue
        keys = [key for key in SIZE_KEYS.get(field.name, ()) if data_cfg.get(key) is not None]
        sized_by = f" ({', '.join(f'data.{key}={data_cfg.get(key)}' for key in keys)})" if keys else ""
        why = f" ({USES[field.name]})" if field.name in USES else ""
        # a size key below the minimum is the one to raise; else the files or fractions feed too few rows
        small = [key for key in keys if key.startswith("n_") and isinstance(data_cfg.get(key), int)
                 and data_cfg.get(key) < need]
        todo = f"set data.{small[0]}>={need}" if small else "give it more rows"
        count = f"{len(rows)} row{'' if len(rows) == 1 else 's'}"
        raise EmptySetError(f"data={data_cfg.get('name')}: the {field.name} set has {count}{sized_by}, "
                            f"it needs at least {need}{why}: {todo}")
