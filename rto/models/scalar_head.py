"""A transformer backbone with a scalar head: the reward model and the PPO critic.

The sentence score is the head's output at the last *real* token, found from the mask
(never by comparing ids with the pad id, which breaks when pad == eos).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from peft import PeftModel
from torch import Tensor, nn
from transformers import AutoModel, PreTrainedModel

from rto.errors import ModelError
from rto.models.forward import per_row, prefixed_inputs, sequence_inputs, shared_prompt_forward

HEAD_FILE = "scalar_head.safetensors"


class ScalarHead(nn.Linear):
    """The value / score head: fp32 whatever the backbone computes in. Under bf16 autocast a plain
    linear layer would round every score and value to bf16 (about 3 significant digits)."""

    def forward(self, hidden: Tensor) -> Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return super().forward(hidden.to(self.weight.dtype))


class ScalarHeadModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.backbone = backbone
        self.head = ScalarHead(backbone.config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (backbone.config.hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_causal_lm(cls, lm: PreTrainedModel) -> "ScalarHeadModel":
        """Backbone copied from a causal LM (the SFT policy, its LoRA folded in), fresh head."""
        if isinstance(lm, PeftModel):
            return cls(copy.deepcopy(lm).merge_and_unload().base_model)
        return cls(copy.deepcopy(lm.base_model))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, **cache) -> Tensor:
        """Per-position values; `cache`: the key/value cache of columns before these (a shared prefix)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               **{"use_cache": False, **cache}).last_hidden_state
        return self.head_values(hidden)

    def head_values(self, hidden: Tensor) -> Tensor:
        return self.head(hidden).squeeze(-1).float()

    def _inputs(self, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
                prefix_len: int) -> dict:
        """The forward's inputs: `sequence_inputs`, or with `prefix_len` the prompts' shared first tokens
        run once and the rest of each prompt and its response on their cache (`prefixed_inputs`)."""
        return prefixed_inputs(self.backbone, prompt_ids, prompt_mask, response_ids, response_mask, prefix_len,
                               lm=False) or sequence_inputs(prompt_ids, prompt_mask, response_ids, response_mask)

    def response_values(self, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                        response_mask: Tensor, prefix_len: int = 0) -> Tensor:
        """Per-token values `[B, R]`: the value of the state *before* each response token.
        `prefix_len`: the prompts' shared first tokens run once (`rto.models.forward.prefixed_inputs`)."""
        values = self(**self._inputs(prompt_ids, prompt_mask, response_ids, response_mask, prefix_len))
        return values[:, -response_ids.shape[1] - 1:-1]  # the prompt's last position, then the response's

    def score(self, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
              response_mask: Tensor, prefix_len: int = 0) -> Tensor:
        """Sentence score `[B]`: the head's output at the last real token of the response."""
        inputs = self._inputs(prompt_ids, prompt_mask, response_ids, response_mask, prefix_len)
        values = self(**inputs)
        mask = inputs["attention_mask"][:, -values.shape[1]:]  # the columns these values are for
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), positions, -1).max(dim=1).values
        return values.gather(1, last.unsqueeze(1)).squeeze(1)

    def score_pairs(self, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                    response_mask: Tensor, rows: Optional[Tensor] = None, prefix_len: int = 0) -> Tensor:
        """`score` for a pair batch (chosen rows, then rejected rows), or, given `rows`
        (`repeated_prompt_rows`), a batch whose prompts repeat: each prompt runs once and its
        responses read its cached keys and values; `prefix_len`: the prompts' shared first tokens
        run once. Falls back to `score` for other batches."""
        batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
                 "response_mask": response_mask, "prefix_len": prefix_len}
        shared = shared_prompt_forward(self.backbone, batch, rows=rows)
        if shared is None:
            return self.score(prompt_ids, prompt_mask, response_ids, response_mask, prefix_len)
        prompt_out, response_out, rows = shared
        # column 0: the prompt's last token (an empty response is scored there), then the response
        hidden = torch.cat([per_row(prompt_out.last_hidden_state[:, -1:], rows), response_out.last_hidden_state],
                           dim=1)
        values = self.head_values(hidden)
        columns = torch.arange(1, response_mask.shape[1] + 1, device=response_mask.device).expand_as(response_mask)
        last = torch.where(response_mask.bool(), columns, 0).max(dim=1).values
        return values.gather(1, last.unsqueeze(1)).squeeze(1)

    def sharing_backbone(self) -> Optional["ScalarHeadModel"]:
        """A copy whose backbone parameters are this model's own objects (a LoRA critic on the frozen
        reward model: one set of backbone weights for both) and whose head is its own, trainable.
        None where the copy would differ from this model saved and read back (`from_pretrained`, which
        reads the saved dtype: the LoRA merged)."""
        if isinstance(self.backbone, PeftModel):
            return None
        model = copy.deepcopy(self, {id(p): p for p in self.backbone.parameters()})
        model.head.requires_grad_(True)
        return model

    def save_pretrained(self, folder: str | Path, in_place: bool = True) -> None:
        """Full backbone weights: a LoRA backbone is merged first, so that `from_pretrained` needs no
        base model. In place: a saved reward model is frozen from then on and holds what was saved;
        `in_place=False` merges on a copy, for a backbone whose frozen base another model shares (a
        critic on the reward model's weights)."""
        folder = Path(folder)
        backbone = self.backbone
        if isinstance(backbone, PeftModel):
            backbone = (backbone if in_place else copy.deepcopy(backbone)).merge_and_unload()
            if in_place:
                self.backbone = backbone
        backbone.save_pretrained(folder, safe_serialization=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(folder / HEAD_FILE))

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> "ScalarHeadModel":
        folder = Path(folder)
        if not (folder / HEAD_FILE).exists():
            raise ModelError(f"no scalar-head model in {folder}: {HEAD_FILE} is missing (expected a reward model "
                             f"folder, e.g. a run's checkpoints/rm)")
        from rto.models.factory import local_model_kwargs

        # dtype "auto": the dtype it was saved in (transformers 5's default; 4.x would load float32)
        model = cls(AutoModel.from_pretrained(str(folder), **{"dtype": "auto", **local_model_kwargs(folder), **kwargs}))
        model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        return model
