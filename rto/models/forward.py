"""Forward passes over `prompt (left-padded) + response (right-padded)` batches.

Every model in the pipeline sees the same layout; position ids come from the attention
mask so that left padding does not shift positions.

Preference pairs (`PairCollator`: chosen rows, then rejected rows, each prompt twice) can run
each prompt once and both responses on its cached keys and values (`shared_prompt_forward`):
the same numbers, with the prompt's forward and backward done once instead of twice. A rollout
with k samples per prompt does the same for each prompt's k responses, in any row order
(`repeated_prompt_rows`).
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


def shared_prompt_forward(model, batch: dict, logits: bool = False,
                          rows: Optional[Tensor] = None) -> Optional[tuple[Any, Any, Tensor]]:
    """Each prompt once, then every row's response on its prompt's cached keys and values: a pair
    batch's `B` prompts for its `2B` rows, or, given `rows` (`repeated_prompt_rows`), each distinct
    prompt of a batch whose prompts repeat.

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
    if _checkpointing(model) or not causal_attention_only(model):
        return None
    firsts = first_rows(rows)
    prompt_mask = batch["prompt_mask"][firsts].long()
    prompt_out = model(input_ids=batch["prompt_ids"][firsts], attention_mask=prompt_mask,
                       position_ids=shift_positions(prompt_mask),
                       use_cache=True, **({"logits_to_keep": 1} if logits else {}))
    cache = cache_of(prompt_out)
    if cache is None or not _selectable(cache):
        return None
    cache.batch_select_indices(rows)  # one copy of its prompt's keys and values per row, in the batch's order
    response_ids, response_mask = batch["response_ids"], batch["response_mask"].long()
    # response token t sits at position (real prompt tokens) + t, as in `sequence_inputs`
    start = prompt_mask.sum(dim=1, keepdim=True)[rows]
    response_positions = start + torch.arange(response_ids.shape[1], device=start.device)
    response_out = model(input_ids=response_ids, attention_mask=torch.cat([prompt_mask[rows], response_mask], dim=1),
                         position_ids=response_positions, use_cache=True, **{cache_keyword(model): cache},
                         **({"logits_to_keep": 0} if logits else {}))  # 0: all positions
    return prompt_out, response_out, rows


def response_forward(model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                     response_mask: Tensor) -> Tensor:
    """Logits `[B, R, V]` that predict each response token (position P-1+t predicts token t)."""
    inputs = sequence_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    response_len = response_ids.shape[1]
    # only the last R+1 positions matter: skip the LM head on the prompt
    logits = model(**inputs, logits_to_keep=response_len + 1, use_cache=False).logits
    return logits[:, :-1].float()


def pair_response_forward(model, batch: dict, rows: Optional[Tensor] = None) -> Tensor:
    """`response_forward` for a pair batch (or, with `rows`, a batch whose prompts repeat), each
    prompt run once (falls back to the plain forward)."""
    shared = shared_prompt_forward(model, batch, logits=True, rows=rows)
    if shared is None:
        return response_forward(model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                                batch["response_mask"])
    prompt_out, response_out, rows = shared
    # the prompt's last position predicts response token 0; response position t predicts token t+1
    return torch.cat([prompt_out.logits[:, -1:][rows], response_out.logits[:, :-1]], dim=1).float()


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
                                  batch["response_mask"])
    if temperature != 1.0:
        logits = logits / temperature
    # logits are already aligned (index t predicts token t): a prompt of length 1 in algos' layout
    return response_logprobs(logits, batch["response_ids"], 1, batch["response_mask"]), logits
