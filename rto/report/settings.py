"""What tells a job's row apart beyond its label, beta and model: the settings a sweep varied.

A multirun over `ppo.actor_optimizer.lr=1e-4,1e-3 seed=0,1,2` holds six jobs of one label, beta and
model; averaging them over seeds would mix the two learning rates (and let one job of a seed replace
another). Here every job gets, per row kind, the settings that differ among the jobs of its label,
beta and model (the seed and run bookkeeping aside), written `key=value, ...`: rows are grouped by it,
so seeds are averaged only over jobs that differ in nothing else. Reference rows (SFT, the DPO
family) only look at the settings their models and evaluation depend on: a swept RL learning rate does
not split the SFT row.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Optional

from omegaconf import OmegaConf

# keys that differ between jobs of one comparison without changing what a row measures
BOOKKEEPING = ("seed", "task_name", "experiment_name", "stage", "threads", "compile", "cpu_prepack",
               "print_config", "cache", "optimized_metric", "resume", "on_nonfinite", "logger", "paths", "hydra",
               "launcher", "eval.policies", "eval.n_samples_saved", "eval.batch_size", "eval.micro_batch_size")
# what each reference row's model and evaluation depend on (its stage's config keys, the reward model
# that scores it, the trainer's precision, the evaluation); the RL row depends on every setting
SHARED_INPUTS = ("model", "data", "trainer", "deterministic", "eval", "sft", "pairs", "rm", "reward_model")
INPUTS = {"sft": SHARED_INPUTS, "dpo": (*SHARED_INPUTS, "dpo")}
KINDS = ("policy", "sft", "dpo")


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def flat_settings(cfg) -> dict[str, tuple[str, str]]:
    """`a.b.c -> (text, value)` of a job's config, bookkeeping left out: the text as written (`${seed}` is
    the same text in every job) and the resolved value (`dpo.beta: ${beta}` and `dpo.beta: 0.1` are the
    same value at beta 0.1); `_shown_values` picks between them."""
    out: dict[str, tuple[str, str]] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif not _under(prefix, BOOKKEEPING):
            out[prefix] = (str(node), _resolved(cfg, prefix, node))

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def _resolved(cfg, key: str, raw: Any) -> str:
    if not (isinstance(raw, str) and "${" in raw):
        return str(raw)
    try:
        return str(OmegaConf.select(cfg, key, throw_on_resolution_failure=True))
    except Exception:  # a resolver only the running job had (hydra:, now:): its text stands for it
        return str(raw)


def setting_labels(jobs: list, label_of: Callable[[Any, str], Optional[str]]) -> dict[tuple[int, str], str]:
    """(job index, row kind) -> the settings that set this job apart from the others of its label, beta
    and model (`""` where none do). `label_of(job, kind)` names the row of each kind, None where the job
    has no such row (a DPO-family job has no RL row: its settings must not split the RL rows)."""
    flats = [flat_settings(job.cfg) for job in jobs]
    labels: dict[tuple[int, str], str] = {}
    for kind in KINDS:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            if (label := label_of(job, kind)) is not None:
                groups[(label, job.beta, job.model)].append(i)
        for members in groups.values():
            keys = {key for i in members for key in flats[i] if kind == "policy" or _under(key, INPUTS[kind])}
            shown = {key: _shown_values(key, [flats[i] for i in members]) for key in keys}
            varied = sorted(key for key, values in shown.items() if len(set(values)) > 1)
            for n, i in enumerate(members):
                labels[i, kind] = ", ".join(f"{key}={shown[key][n]}" for key in varied)
    return labels


def _shown_values(key: str, flats: list[dict[str, tuple[str, str]]]) -> list[str]:
    """Each job's value of `key` as the row label shows it: the resolved value (`${beta}` at beta 0.1 and
    `0.1` are one setting), but the text where one text resolves to several values among the jobs (`${seed}`:
    the same setting in each job; what it points to has its own key)."""
    entries = [flat.get(key, ("–", "–")) for flat in flats]
    values_of: dict[str, set[str]] = defaultdict(set)
    for text, value in entries:
        values_of[text].add(value)
    return [text if len(values_of[text]) > 1 else value for text, value in entries]
