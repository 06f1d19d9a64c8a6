"""Data: where rows come from (the embedded task or files) and how they become tensors."""

from rto.data.collate import PairCollator, PromptCollator, SFTCollator, encode_prompts
from rto.data.bundle import DataBundle
from rto.data.sources import load_data

__all__ = ["DataBundle", "load_data", "PairCollator", "PromptCollator", "SFTCollator", "encode_prompts"]
