"""One PPO iteration setting in a worker process that the drivers pause between iterations.

    python benchmarks/iteration_worker.py SPEC.json      (driven by smollm2_iteration.py, scaling.py, vs_trl_smollm2.py)

SPEC (JSON): `model` (a `conf/model` preset: smollm2-135m-gguf, tiny, small, base, ...), `lora` (a LoRA
node or null), `prompts` (rollout batch), `new_tokens`, `epochs`, `minibatch`, `reward`, `threads`,
`overrides` (more Hydra overrides, e.g. `trainer.precision=bf16-mixed`), `full_length` (the sampler
is given no EOS, so every response runs `new_tokens` tokens and every variant does the same work),
`root` (the checkout whose `rto` runs: another checkout gives the "before" side).

The models are built with the pipeline's own factory, as its PPO stage holds them: the SFT policy
(pretrained with LoRA, or from the preset's shape), saved; the reward model from its backbone,
saved; the DPO model and the actor loaded from the SFT folder; the critic from the reward model;
the reference is the SFT policy. They are untrained: an iteration's cost does not depend on the
values of the weights. Prompts: the sentiment task's (through the chat template) for a pretrained
model, the embedded task's for a from-scratch preset.

Protocol (stdout): `@@READY {setup}` once built; then, on stdin, `run K`: K iterations under the
real `PPOModule` and Lightning trainer, each answered `@@PHASES {phase: seconds}`, then `@@DONE`;
`profile PATH`: one iteration under the torch profiler (tables to PATH), answered `@@PROFILE
{matmul flops, ...}`; `stop` exits.
Phases are timed by wrapping the functions `PPOModule` calls (a wrapper that finds nothing to wrap
leaves that phase out, so a restructured module still runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PHASES_PREFIX = "@@PHASES "
PROFILE_PREFIX = "@@PROFILE "
READY_PREFIX = "@@READY "
DONE = "@@DONE"


def peak_rss_mib() -> float:
    """The process's peak resident memory since the last `reset_peak_rss` (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM back to the current RSS


class Phases:
    """Seconds per named phase within one iteration; nested phases are recorded on their own too."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.open: dict[str, tuple] = {}

    def start(self, name: str) -> None:
        """A phase begins; also a torch-profiler range of that name (seen in a trace of the iteration)."""
        import torch

        scope = torch.profiler.record_function(name)
        scope.__enter__()
        self.open[name] = (scope, time.perf_counter())

    def stop(self, name: str) -> None:
        scope, start = self.open.pop(name)
        self.seconds[name] += time.perf_counter() - start
        scope.__exit__(None, None, None)

    @contextlib.contextmanager
    def time(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def wrap(self, owner, attr: str, name) -> None:
        """Time every call of `owner.attr`; `name` is a phase name or `(args) -> name`."""
        original = getattr(owner, attr, None)
        if original is None:
            print(f"(no {attr} in {owner}: phase not timed)", file=sys.stderr)
            return

        def timed(*args, **kwargs):
            with self.time(name(*args, **kwargs) if callable(name) else name):
                return original(*args, **kwargs)
        setattr(owner, attr, timed)


def write_profile(profiler, path: str, seconds: float) -> dict:
    """The torch profiler's tables for one iteration (top ops; top ops by input shape) and its matmul FLOPs."""
    events = profiler.key_averages()
    flops = sum(e.flops for e in events)
    Path(path).write_text(events.table(sort_by="self_cpu_time_total", row_limit=30) + "\n"
                          + profiler.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total",
                                                                                    row_limit=25))
    by_op = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    total = sum(by_op.values())
    top = dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:12])
    return {"flops": flops, "profiled_seconds": seconds, "self_cpu_seconds": total, "top_ops": top}


def compose_cfg(spec: dict, conf_dir: Path):
    from hydra import compose, initialize_config_dir

    overrides = [f"model={spec['model']}", f"reward={spec['reward']}", "logger=none", f"threads={spec['threads']}",
                 f"ppo.rollout_batch_size={spec['prompts']}", f"ppo.minibatch_size={spec['minibatch']}",
                 f"ppo.ppo_epochs={spec['epochs']}", f"ppo.max_new_tokens={spec['new_tokens']}",
                 f"seed={spec.get('seed', 0)}"]
    if spec.get("lora"):
        overrides.append("model.lora=" + json.dumps(spec["lora"]).replace('"', ""))
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *spec.get("overrides", [])])
    from rto.config import validate
    validate(cfg)
    return cfg


def task_prompts(cfg, spec: dict):
    """(tokenizer, encoder, prompts): the sentiment task for a pretrained model, else the embedded task."""
    from omegaconf import open_dict

    if cfg.model.get("pretrained"):
        from rto.models.factory import load_tokenizer
        from rto.tasks.sentiment import chat_encoder, sentiment_prompts

        tok = load_tokenizer(cfg.model)
        prompts = sentiment_prompts(spec.get("seed", 0), 256, 0, 0).train
        return tok, chat_encoder(tok, 128, spec["new_tokens"]), prompts
    from rto.data import load_data

    with open_dict(cfg):  # room for the longest response the benchmark asks for
        cfg.model.max_position_embeddings = max(cfg.model.max_position_embeddings, 64 + spec["new_tokens"])
        cfg.data.max_response_tokens = spec["new_tokens"]
    bundle = load_data(cfg.data)
    return bundle.tokenizer, bundle.encoder, bundle.train_prompts


def build_module(cfg, spec: dict, tok, encoder, folder: Path):
    """The PPO stage's models, built and loaded with the pipeline's own factory."""
    from hydra.utils import instantiate

    from rto.algos.rewards import reward_variant
    from rto.models.factory import build_policy, load_policy, save_policy
    from rto.models.retokenize import RewardScorer
    from rto.models.reward import new_critic, new_reward_model
    from rto.stages import PPOModule

    sft = build_policy(cfg.model, tok)
    save_policy(sft, tok, folder / "sft")
    rm = new_reward_model(cfg.reward_model, cfg.model, sft)
    rm.save_pretrained(folder / "rm")
    tok.save_pretrained(folder / "rm")
    dpo = load_policy(folder / "sft", cfg.model) if reward_variant(cfg.reward.name).uses_dpo else None
    actor = load_policy(folder / "sft", cfg.model)
    critic = new_critic(cfg.reward_model, cfg.model, folder / "rm", folder / "sft", tok, tok, rm)
    ppo = cfg.ppo
    eos = -1 if spec.get("full_length", True) else tok.eos_token_id  # -1: never sampled, every row runs to the limit
    module = PPOModule(actor, critic, sft, RewardScorer(rm, encoder, tok), dpo, ppo_cfg=ppo, reward_cfg=cfg.reward,
                       beta=cfg.beta, actor_optimizer=instantiate(ppo.actor_optimizer),
                       critic_optimizer=instantiate(ppo.critic_optimizer), eos_id=eos, pad_id=tok.pad_token_id,
                       decode=None, gold=None, seed=cfg.seed)
    return module


def instrument(module, phases: Phases) -> None:
    """Phase timers around what `RLModule.training_step` calls (the names in rto.stages.learner,
    rto.stages.update and rto.stages.ppo): sampling (its prompt forwards the prefill: one, or the shared prefix
    and the rest of the prompts; its one-token forwards decoding steps), the
    experience by model, the update's forwards, backward and optimizer steps (`time_optimizers`)."""
    from rto.rl import experience
    from rto.stages import learner, ppo, update as minibatch_update

    roles = {id(module.actor): "pi_old", id(module.reference): "reference", id(module.dpo_policy): "dpo"}
    sampling = {"on": False, "step": None}
    original_sample = learner.sample_responses

    def sample(*args, **kwargs):
        sampling["on"] = True
        try:
            with phases.time("sampling"):
                return original_sample(*args, **kwargs)
        finally:
            sampling["on"] = False
    learner.sample_responses = sample

    def pre(mod, args, kwargs):
        if sampling["on"]:
            one_token = kwargs["input_ids"].shape[1] == 1
            sampling["step"] = "sampling/decode_forward" if one_token else "sampling/prefill"
            phases.start(sampling["step"])

    def post(mod, args, kwargs, out):
        if sampling["on"]:
            phases.stop(sampling["step"])
    module.actor.register_forward_pre_hook(pre, with_kwargs=True)
    module.actor.register_forward_hook(post, with_kwargs=True)

    phases.wrap(ppo, "make_experience", "experience")
    phases.wrap(experience, "policy_logprobs", lambda model, *a, **k: f"experience/{roles.get(id(model), 'other')}")
    phases.wrap(experience, "critic_values", "experience/critic")
    phases.wrap(module.reward_model, "score", "experience/reward_model")
    phases.wrap(module, "update", "update")
    phases.wrap(minibatch_update, "policy_logprobs", "update/actor_forward")  # the update's forward lives in rto.stages.update
    phases.wrap(ppo, "critic_values", "update/critic_forward")
    phases.wrap(module, "manual_backward", "update/backward")
    phases.wrap(minibatch_update, "clip_grad_norm", "update/clip_gradients")  # each optimizer's norm and clip


def time_optimizers(optimizers, phases: Phases) -> None:
    """`update/optimizer`: every optimizer's step (the trainer makes them at the start of `fit`)."""
    for optimizer in optimizers:
        phases.wrap(optimizer, "step", "update/optimizer")


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    root = Path(spec.get("root") or Path(__file__).resolve().parents[1])
    sys.path.insert(0, str(root))
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from rto.data import PromptCollator
    try:
        from rto.context import stage_speedups  # what a run's stages train under (RunContext.fit)
    except ImportError:  # an older checkout (the `before` variant): what it had of it
        from rto.models.speed import fast_stage
        try:
            from rto.models.precision import frozen_weights_lowered
        except ImportError:
            frozen_weights_lowered = lambda *args: contextlib.nullcontext()  # noqa: E731

        @contextlib.contextmanager
        def stage_speedups(cfg, module):
            with fast_stage(module, cfg.compile), frozen_weights_lowered(cfg.trainer, module):
                yield

    torch.set_num_threads(spec["threads"])
    cfg = compose_cfg(spec, root / "conf")
    L.seed_everything(cfg.seed, verbose=False)
    start = time.perf_counter()
    tok, encoder, prompts = task_prompts(cfg, spec)
    with tempfile.TemporaryDirectory() as tmp:
        module = build_module(cfg, spec, tok, encoder, Path(tmp))
        setup_seconds = time.perf_counter() - start
        phases = Phases()
        instrument(module, phases)
        total = spec.get("max_iterations", 1000)
        rows = [prompts[i % len(prompts)] for i in range(total * spec["prompts"])]
        loader = DataLoader(rows, batch_size=spec["prompts"], shuffle=False, collate_fn=PromptCollator(encoder))

        class Clock(L.Callback):
            """Pauses between iterations for the driver's commands: `run K`, `profile PATH`, `stop`."""

            def __init__(self):
                self.remaining, self.profiler, self.profile_path = 0, None, None

            def wait(self):
                line = sys.stdin.readline().split()
                if not line or line[0] == "stop":
                    sys.stdout.flush()
                    os._exit(0)  # mid-loop: leave without the trainer's teardown
                if line[0] == "profile":  # the next iteration under the torch profiler (not timed)
                    self.remaining, self.profile_path = 1, line[1]
                    self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                           record_shapes=True, with_flops=True)
                else:
                    self.remaining = int(line[1])
                    if self.remaining <= 0:  # `run 0` (`--warmup 0`): nothing to run, answer at once
                        print(DONE, flush=True)
                        self.wait()

            def on_train_start(self, trainer, pl_module):
                time_optimizers(trainer.optimizers, phases)

            def on_train_batch_start(self, *args):
                phases.seconds.clear()
                if self.profiler is not None:
                    self.profiler.start()
                self.start = time.perf_counter()

            def on_train_batch_end(self, *args):
                seconds = time.perf_counter() - self.start
                if self.profiler is not None:
                    self.profiler.stop()
                    print(PROFILE_PREFIX + json.dumps(write_profile(self.profiler, self.profile_path, seconds)),
                          flush=True)
                    self.profiler = None
                else:
                    print(PHASES_PREFIX + json.dumps({"iteration": seconds, **phases.seconds,
                                                      "peak_rss_mib": peak_rss_mib(),
                                                      "load_average_1min": os.getloadavg()[0]}), flush=True)
                self.remaining -= 1
                if self.remaining == 0:
                    print(DONE, flush=True)
                    self.wait()

        clock = Clock()
        trainer = instantiate(cfg.trainer, logger=False, max_epochs=1, callbacks=[clock])
        n_params = sum(p.numel() for p in module.actor.parameters())
        print(READY_PREFIX + json.dumps({"setup_seconds": setup_seconds, "actor_parameters": n_params,
                                         "prompt_tokens": int(next(iter(loader))["prompt_ids"].shape[1]),
                                         "setup_peak_rss_mib": peak_rss_mib(), "torch": torch.__version__}),
              flush=True)
        reset_peak_rss()
        clock.wait()
        with stage_speedups(cfg, module):
            trainer.fit(module, loader)


if __name__ == "__main__":
    main()
