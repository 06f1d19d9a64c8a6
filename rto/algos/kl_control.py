"""The KL coefficient `beta` of the RLHF objective, per iteration (`kl_ctl=fixed|adaptive`).

- `fixed` (default; the RTO paper keeps beta_2 fixed): `beta_t = beta`.
- `adaptive` (Ziegler et al. 2019, as TRL and OpenRLHF implement it): after each iteration, with
  `KL_t` the rollout's mean per-response KL (sum over tokens of `log pi - log pi_ref`) and `n` the
  responses it sampled (over every data-parallel rank),
  `beta_{t+1} = beta_t * (1 + clip(KL_t / target - 1, -0.2, 0.2) * n / horizon)`.
"""

from __future__ import annotations

KL_CONTROLLERS = ("fixed", "adaptive")


class KLController:
    """`value` is the coefficient the next iteration uses; `state_dict` travels in resume checkpoints."""

    def __init__(self, beta: float, kind: str = "fixed", target: float | None = None, horizon: float | None = None):
        if kind not in KL_CONTROLLERS:
            raise ValueError(f"unknown KL controller {kind!r}; expected one of {KL_CONTROLLERS}")
        self.value, self.kind, self.target, self.horizon = float(beta), kind, target, horizon

    def update(self, kl: float, n_responses: int) -> float:
        if self.kind == "adaptive":
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_responses / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
