"""Forward passes over `prompt (left-padded) + response (right-padded)` batches.

Every model in the pipeline sees the same layout; position ids come from the attention
mask so that left padding does not shift positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rto.algos.logprobs import response_logprobs


def sequence_inputs(prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                    response_mask: Tensor) -> dict[str, Tensor]:
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def response_forward(model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                     response_mask: Tensor) -> Tensor:
    """Logits `[B, R, V]` that predict each response token (position P-1+t predicts token t)."""
    inputs = sequence_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    response_len = response_ids.shape[1]
    # only the last R+1 positions matter: skip the LM head on the prompt
    logits = model(**inputs, logits_to_keep=response_len + 1, use_cache=False).logits
    return logits[:, :-1].float()


def policy_logprobs(model, batch: dict) -> tuple[Tensor, Tensor]:
    """`(logprobs [B, R], logits [B, R, V])` of the batch's response tokens under `model`;
    masked slots of `logprobs` are exactly 0."""
    logits = response_forward(model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                              batch["response_mask"])
    # logits are already aligned (index t predicts token t): a prompt of length 1 in algos' layout
    return response_logprobs(logits, batch["response_ids"], 1, batch["response_mask"]), logits
