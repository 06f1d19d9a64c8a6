"""How far the first PPO minibatch starts from the rollout it trains on: the largest `|pi / pi_old - 1|`
and `|V - V_old|` over its real response tokens. Both are 0 up to float rounding when the update's
forwards take the path pi_old and the old values took (`docs/precision.md`). Read by the tests (1e-5 on
tiny models) and by `benchmarks/first_minibatch_ratio.py` (a real model), through the same spies.
"""

from __future__ import annotations

from typing import Callable

from rto.algos.losses import ppo_policy_loss, value_loss
from rto.stages import ppo as ppo_stage
from rto.stages import update as update_stage


def record_first_minibatch(patch: Callable[[object, str, object], None] = setattr) -> dict[str, float]:
    """Wraps the policy and value losses the update calls so that the first call of each records its
    maximum (`ratio`, `values`) in the returned dict; the losses themselves are unchanged. `patch`
    installs the wrappers: pytest's `monkeypatch.setattr` (undone after the test), or `setattr`."""
    seen: dict[str, float] = {}

    def policy_spy(logprobs, old_logprobs, advantages, mask, clip_range):
        real = mask.bool()
        seen.setdefault("ratio", float((logprobs - old_logprobs).detach()[real].exp().sub(1).abs().max()))
        return ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range)

    def value_spy(values, old_values, returns, mask, clip_range):
        seen.setdefault("values", float((values - old_values).detach()[mask.bool()].abs().max()))
        return value_loss(values, old_values, returns, mask, clip_range)

    patch(update_stage, "ppo_policy_loss", policy_spy)
    patch(ppo_stage, "value_loss", value_spy)
    return seen
