"""Models: the causal LM policy, the scalar-head reward model / critic, and their forward passes."""

from rto.models.factory import build_policy, load_policy, save_policy
from rto.models.forward import policy_logprobs, response_forward, sequence_inputs
from rto.models.scalar_head import ScalarHeadModel

__all__ = ["build_policy", "load_policy", "save_policy", "policy_logprobs", "response_forward", "sequence_inputs",
           "ScalarHeadModel"]
