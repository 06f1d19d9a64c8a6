"""Forward passes over `prompt (left-padded) + response (right-padded)` batches.

Every model in the pipeline sees the same layout; position ids come from the attention
mask so that left padding does not shift positions.

Preference pairs (`PairCollator`: chosen rows, then rejected rows, each prompt twice) can run
each prompt once and both responses on its cached keys and values (`shared_prompt_forward`):
the same numbers, with the prompt's forward and backward done once instead of twice. A rollout
with k samples per prompt does the same for each prompt's k responses, in any row order
(`repeated_prompt_rows`).

Prompts that all begin with the same tokens (a chat template's system prompt and user header: 24 of
SmolLM2's ~46 prompt tokens) can run those tokens once for the whole batch (`prefix_len`, see
`common_prefix_length`): the rest of each prompt and its response read the prefix's cached keys and
values. The RL loop fixes `prefix_len` once per rollout, so pi_old, the update's minibatches and the
critic's old and new values all take the same path.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from torch import Tensor

from rto.algos.logprobs import response_logprobs, shift_positions


def sequence_inputs(prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                    response_mask: Tensor) -> dict[str, Tensor]:
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": shift_positions(attention_mask)}


def cache_keyword(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; accept both generations of models.
    A wrapper (a peft LoRA model) forwards `**kwargs`: read the signature of the model it wraps."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output):
    """The KV cache a forward returned, under either name; None for models that return none."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _checkpointing(model) -> bool:
    """Activation checkpointing turns the cache off (transformers 5 renamed the flag)."""
    flag = getattr(model, "is_activation_checkpointing", None)
    return bool(getattr(model, "is_gradient_checkpointing", False) if flag is None else flag)


def causal_attention_only(model) -> bool:
    """Every attention module is causal. Encoders (BERT, DeBERTa as reward models) and models without
    attention modules (state-space layers) take the plain forward: a response may not see only the
    prompt's cache there."""
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return bool(flags) and all(flags)


def sliding_window_attention(model) -> bool:
    """Some layer attends within a sliding window (Mistral, Gemma 2/3, Phi-3, Qwen2 with
    `use_sliding_window`). transformers counts the window in cache columns, not positions, so the
    prefix layout (prefix, pads, rest of the prompt) would move the prefix out of the window early:
    such models do not share a prefix."""
    config = getattr(model, "config", None)
    if any("sliding" in str(kind) for kind in (getattr(config, "layer_types", None) or [])):
        return True
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True) is not False


def _selectable(cache) -> bool:
    """A key/value cache whose every layer can repeat its rows (not a recurrent or hybrid state)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(hasattr(layer, "batch_select_indices") for layer in layers)


def holds_pairs(batch: dict) -> bool:
    """True for a `PairCollator` batch: its two halves hold the same prompts, each with at least
    one real token in the last column (left padding), so one cached prompt serves both rows."""
    ids, mask = batch["prompt_ids"], batch["prompt_mask"]
    half = ids.shape[0] // 2
    return (ids.shape[0] == 2 * half > 0 and bool(mask[:, -1].all()) and torch.equal(ids[:half], ids[half:])
            and torch.equal(mask[:half], mask[half:]))


def repeated_prompt_rows(batch: dict) -> Optional[Tensor]:
    """For a batch whose prompts repeat (k samples per prompt, rows in any order): each row's index
    among the distinct prompts `[N]`; None when no prompt repeats, or a prompt has no real token in
    the last column (not left-padded), where the plain forward is the one to run."""
    ids, mask = batch["prompt_ids"], batch["prompt_mask"]
    if ids.shape[0] < 2 or not bool(mask[:, -1].all()):
        return None
    distinct, rows = torch.unique(torch.cat([ids, mask.long()], dim=1), dim=0, return_inverse=True)
    return rows if distinct.shape[0] < ids.shape[0] else None


def first_rows(rows: Tensor) -> Tensor:
    """The first row of each distinct prompt `[U]` (`rows` maps rows to prompts 0..U-1)."""
    n = rows.shape[0]
    first = torch.full((int(rows.max()) + 1,), n, dtype=torch.long, device=rows.device)
    return first.scatter_reduce(0, rows, torch.arange(n, device=rows.device), reduce="amin")


def common_prefix_length(prompt_ids: Tensor, prompt_mask: Tensor, min_tokens: Optional[int]) -> int:
    """How many leading real tokens every left-padded prompt of the batch shares (a chat template's
    system prompt and user header), leaving each prompt at least one token of its own; 0 (no
    sharing) where that is fewer than `min_tokens` (null or 0: never share), the batch has one row,
    or a prompt is not left-padded."""
    ids, mask = prompt_ids, prompt_mask.long()
    if not min_tokens or ids.shape[0] < 2 or not bool(mask[:, -1].all()):
        return 0
    lengths = mask.sum(dim=1)
    starts = ids.shape[1] - lengths
    if not torch.equal(mask, (torch.arange(ids.shape[1], device=ids.device) >= starts[:, None]).long()):
        return 0  # a hole in a prompt's mask: not plain left padding
    heads = ids.gather(1, starts[:, None] + torch.arange(int(lengths.min()) - 1, device=ids.device))
    shared = int((heads == heads[:1]).all(dim=0).long().cumprod(dim=0).sum())
    return shared if shared >= min_tokens else 0


def split_prefix(prompt_ids: Tensor, prompt_mask: Tensor, prefix_len: int) -> tuple[Tensor, Tensor, Tensor]:
    """`(prefix [1, L], rest of each prompt [B, P-L], its mask)`: the prompts' `L` shared leading
    tokens and what follows them, still left-padded (pads, then the row's own tokens)."""
    mask = prompt_mask.long()
    width = prompt_ids.shape[1]
    if not 0 < prefix_len < int(mask.sum(dim=1).min()):
        raise ValueError(f"prefix_len={prefix_len}: every prompt needs a token after its prefix")
    starts = width - mask.sum(dim=1, keepdim=True)  # each row's first real column
    prefix_columns = starts + torch.arange(prefix_len, device=mask.device)
    prefix = prompt_ids.gather(1, prefix_columns)
    if not bool((prefix == prefix[:1]).all()):
        raise ValueError(f"prefix_len={prefix_len}: the prompts do not share their first {prefix_len} tokens")
    columns = torch.arange(width - prefix_len, device=mask.device).expand(mask.shape[0], -1)
    columns = columns + prefix_len * (columns >= starts)  # skip the prefix: pads stay left, the rest follows
    return prefix[:1], prompt_ids.gather(1, columns), mask.gather(1, columns)


def per_row(t: Tensor, rows: Optional[Tensor]) -> Tensor:
    """A per-prompt tensor `[U, ...]` read per row (`rows` maps rows to prompts; None: one row each)."""
    return t if rows is None else t[rows]


def prefix_cache(model, prefix: Tensor, rows: int, lm: bool) -> Optional[Any]:
    """The shared prefix's `[1, L]` forward: its key/value cache with one copy per row, or None where
    this cannot be done (gradient checkpointing, not a causal model, sliding-window attention, a cache
    without row selection). Gradients through the copies reach the one prefix forward. `lm`: a causal
    LM (its LM head runs at the last position only)."""
    if _checkpointing(model) or not causal_attention_only(model) or sliding_window_attention(model):
        return None
    positions = torch.arange(prefix.shape[1], device=prefix.device)[None]
    head = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), position_ids=positions, use_cache=True,
                 **({"logits_to_keep": 1} if lm else {}))
    cache = cache_of(head)
    if cache is None or not _selectable(cache):
        return None
    cache.batch_select_indices(torch.zeros(rows, dtype=torch.long, device=prefix.device))
    return cache


def prefixed_inputs(model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
                    prefix_len: int, lm: bool = True) -> Optional[dict[str, Any]]:
    """`sequence_inputs` with the prompts' shared first `prefix_len` tokens already run (once, for
    all rows): the inputs of the rest of each prompt and its response, `[B, P - L + R]`, on the
    prefix's cache (under the model's cache keyword); each token keeps its position, and its output
    column is the plain forward's last `P - L + R` columns. None where this cannot be done
    (`prefix_len` 0, or `prefix_cache` says no): the caller runs `sequence_inputs`."""
    if not prefix_len:
        return None
    prefix, rest_ids, rest_mask = split_prefix(prompt_ids, prompt_mask, prefix_len)
    cache = prefix_cache(model, prefix, prompt_ids.shape[0], lm)
    if cache is None:
        return None
    rest = sequence_inputs(rest_ids, rest_mask, response_ids, response_mask)
    mask = torch.cat([rest["attention_mask"].new_ones(prompt_ids.shape[0], prefix_len), rest["attention_mask"]], dim=1)
    return {"input_ids": rest["input_ids"], "attention_mask": mask, "position_ids": prefix_len + rest["position_ids"],
            "use_cache": True, cache_keyword(model): cache}


def shared_prompt_cache(model, prompt_ids: Tensor, prompt_mask: Tensor, rows: Optional[Tensor],
                        logits: bool = False, prefix_len: int = 0) -> Optional[tuple[Any, Any, Tensor]]:
    """Each distinct prompt once (`rows` maps the `N` rows to prompts 0..U-1; None: every row its own
    prompt; the prompts left-padded) and, with `prefix_len`, the prompts' shared first `prefix_len`
    tokens once for all of them. Returns `(prompt output [U], its key/value cache with one copy per
    row [N], in the rows' order, the attention mask [N, P] of the cache's columns)`, or None where
    this cannot be done (gradient checkpointing, not a causal model, a cache without row selection).
    With a prefix the cache holds the prefix first, then the rest of each prompt (left-padded): the
    returned mask has a run of pads between the two, and each token keeps its position. A model that
    cannot share a prefix (`prefix_cache`) still runs each distinct prompt once, in the plain layout.
    `logits`: a causal LM, the prompt's logits at its last position only."""
    if _checkpointing(model) or not causal_attention_only(model):
        return None
    if rows is not None:
        firsts = first_rows(rows)
        prompt_ids, prompt_mask = prompt_ids[firsts], prompt_mask[firsts]
    mask = prompt_mask.long()
    none = prompt_ids[:, :0]  # no response: the prompts alone
    inputs = prefixed_inputs(model, prompt_ids, mask, none, none, prefix_len, lm=logits) \
        or {**sequence_inputs(prompt_ids, mask, none, none), "use_cache": True}
    prompt_out = model(**inputs, **({"logits_to_keep": 1} if logits else {}))
    mask = inputs["attention_mask"]
    cache = cache_of(prompt_out)
    if cache is None or not _selectable(cache):
        return None
    if rows is not None:
        cache.batch_select_indices(rows)  # one copy of its prompt's keys and values per row, in the rows' order
    return prompt_out, cache, per_row(mask, rows)


def shared_prompt_forward(model, batch: dict, logits: bool = False,
                          rows: Optional[Tensor] = None) -> Optional[tuple[Any, Any, Tensor]]:
    """Each prompt once, then every row's response on its prompt's cached keys and values: a pair
    batch's `B` prompts for its `2B` rows, or, given `rows` (`repeated_prompt_rows`), each distinct
    prompt of a batch whose prompts repeat; with `batch["prefix_len"]` (the RL loop's batches), the
    prompts' shared first tokens once for all of them.

    Returns `(prompt output [U], response output [N], rows)`, `rows` mapping each of the `N` rows
    to its prompt, or None where this cannot be done (not a pair batch, gradient checkpointing, a
    model without a selectable cache): the caller then does the plain forward. Gradients through the
    cache reach the prompt from every response, as in the plain forward. In train mode with dropout,
    the rows of one prompt share the prompt's dropout mask.
    `logits`: a causal LM (the prompt's logits at its last position only, the responses' at all).
    """
    if rows is None:
        if not holds_pairs(batch):
            return None
        rows = torch.arange(batch["prompt_ids"].shape[0] // 2, device=batch["prompt_ids"].device).repeat(2)
    shared = shared_prompt_cache(model, batch["prompt_ids"], batch["prompt_mask"], rows, logits,
                                 batch.get("prefix_len", 0))
    if shared is None:
        return None
    prompt_out, cache, cache_mask = shared
    response_ids, response_mask = batch["response_ids"], batch["response_mask"].long()
    # response token t sits at position (real prompt tokens) + t, as in `sequence_inputs`
    start = batch["prompt_mask"].long().sum(dim=1, keepdim=True)
    response_positions = start + torch.arange(response_ids.shape[1], device=start.device)
    response_out = model(input_ids=response_ids, attention_mask=torch.cat([cache_mask, response_mask], dim=1),
                         position_ids=response_positions, use_cache=True, **{cache_keyword(model): cache},
                         **({"logits_to_keep": 0} if logits else {}))  # 0: all positions
    return prompt_out, response_out, rows


def response_forward(model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                     response_mask: Tensor, prefix_len: int = 0) -> Tensor:
    """Logits `[B, R, V]` that predict each response token (position P-1+t predicts token t).
    `prefix_len`: the prompts' shared first tokens run once (`prefixed_inputs`)."""
    inputs = prefixed_inputs(model, prompt_ids, prompt_mask, response_ids, response_mask, prefix_len) \
        or {**sequence_inputs(prompt_ids, prompt_mask, response_ids, response_mask), "use_cache": False}
    response_len = response_ids.shape[1]
    # only the last R+1 positions matter: skip the LM head on the prompt
    logits = model(**inputs, logits_to_keep=response_len + 1).logits
    return logits[:, :-1].float()


def pair_response_forward(model, batch: dict, rows: Optional[Tensor] = None) -> Tensor:
    """`response_forward` for a pair batch (or, with `rows`, a batch whose prompts repeat), each
    prompt run once, and with `batch["prefix_len"]` the prompts' shared prefix once (falls back to
    `response_forward`)."""
    shared = shared_prompt_forward(model, batch, logits=True, rows=rows)
    if shared is None:
        return response_forward(model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                                batch["response_mask"], batch.get("prefix_len", 0))
    prompt_out, response_out, rows = shared
    # the prompt's last position predicts response token 0; response position t predicts token t+1
    return torch.cat([per_row(prompt_out.logits[:, -1:], rows), response_out.logits[:, :-1]], dim=1).float()


def policy_logprobs(model, batch: dict, share_prompt: bool = False,
                    temperature: float = 1.0, share_repeated: bool = False) -> tuple[Tensor, Tensor]:
    """`(logprobs [B, R], logits [B, R, V])` of the batch's response tokens under `model`;
    masked slots of `logprobs` are exactly 0. `share_prompt`: a pair batch runs each prompt once;
    `share_repeated`: a batch whose prompts repeat (k samples per prompt) runs each prompt once.
    `temperature`: the distribution `softmax(logits / T)` that sampling at T draws from (the
    returned logits are divided by T too); the RL loop reads every model at the sampling T."""
    rows = repeated_prompt_rows(batch) if share_repeated else None
    if share_prompt or rows is not None:
        logits = pair_response_forward(model, batch, rows)
    else:
        logits = response_forward(model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                                  batch["response_mask"], batch.get("prefix_len", 0))
    if temperature != 1.0:
        logits = logits / temperature
    # logits are already aligned (index t predicts token t): a prompt of length 1 in algos' layout
    return response_logprobs(logits, batch["response_ids"], 1, batch["response_mask"]), logits
