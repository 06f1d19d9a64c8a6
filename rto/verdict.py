"""Does RTO beat PPO? The whole protocol in one command (docs/BENCHMARKS.md, "The verdict").

    python -m rto.verdict                        # defaults: 6 trials per arm, 3 seeds, 4 betas
    python -m rto.verdict --trials 2 --seeds 2 --betas 0.05,0.2 -- debug=tiny     # a toy run
    python -m rto.report <out>                   # the report (the command runs it at the end too)

1. **Tune** each arm (PPO with the sentence reward, RTO with the token reward, DPO) with the same
   number of Optuna trials on its own knobs (`conf/hparams_search/{ppo,rto,dpo}.yaml`), optimising
   gold reward on VALIDATION prompts, seed 0.
2. **Final**: each arm's best config over `--seeds` seeds (1, 2, ...: not the tuning seed, whose luck
   in training the search selected) on TEST prompts. If RTO - PPO is not significant (paired t-test,
   p >= 0.05) in the final runs' last VALIDATION reading, `--more-seeds` (2) more seeds for every arm:
   the decision never reads test prompts, and without validation readings the seeds are added.
3. **Frontier**: each RL arm's best config with `beta` swept (the final seeds) (one DPO model: `dpo.beta` pinned), and
   DPO's best config with `dpo.beta` swept, on test prompts: the report compares the arms at equal KL.
4. **Density**: the DPO-reward variants (sentence, DDPO, Semi-RTO, RS-PPO) at RTO's best config;
   RTO itself is the final arm's runs (the same config and seeds).

Every step is a Hydra multirun of `python -m rto.main` under `<out>/<step>/<arm>`; the stage cache
shares SFT, RM and DPO models between them. `<out>/protocol.json` records the commands, the best
configs and the wall time of each step. Arguments after `--` go to every run (sizes, cache folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from rto.report.stats import paired

log = logging.getLogger(__name__)

# what makes each arm that arm, outside tuning (the hparams_search configs set the same; a test checks)
ARMS = {
    "ppo": {"reward": "sentence", "eval.policies": "[sft,policy]"},
    "rto": {"reward": "token", "dpo.beta": 0.1, "eval.policies": "[sft,policy]"},
    "dpo": {"eval.policies": "[sft,dpo]"},
}
METRIC = {"ppo": "eval/policy/gold_reward", "rto": "eval/policy/gold_reward", "dpo": "eval/dpo/gold_reward"}
FIRST_SEED = 1  # of the final, frontier and density runs: tuning ran at seed 0
VAL_METRIC = "val/gold_reward"  # the final runs' last validation reading: what decides on more seeds
# the embedded task has no sentence delimiters: Semi-RTO over fixed windows of tokens (reward=semi_window)
DENSITY_VARIANTS = ("sentence", "ddpo", "semi_window", "shaping")
STEPS = ("tune", "final", "frontier", "density")


def overrides(settings: dict) -> list[str]:
    return [f"{key}={'null' if value is None else value}" for key, value in settings.items()]


class Protocol:
    def __init__(self, out: Path, extra: list[str], trials: int, seeds: int, betas: list[float],
                 more_seeds: int = 2, dry_run: bool = False, jobs: int = 1):
        self.out, self.trials, self.seeds, self.betas = out, trials, seeds, betas
        self.jobs = jobs
        # parallel jobs through the joblib launcher, one torch thread each: the embedded task's models are
        # small enough that two one-thread processes finish sooner than one two-thread process
        self.extra = ["launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "threads=1", *extra] if jobs > 1 else extra
        self.more_seeds, self.dry_run = more_seeds, dry_run
        # what each step runs with; a step run again replaces its own record (and its seconds)
        self.settings = {"trials": trials, "seeds": seeds, "first_seed": FIRST_SEED, "betas": betas,
                         "jobs": jobs, "extra_overrides": extra}
        self.record: dict = {"steps": [], "best": {}}
        if (out / "protocol.json").is_file():  # a later step of the same protocol: keep what is recorded
            earlier = json.loads((out / "protocol.json").read_text())
            self.record.update({k: earlier[k] for k in ("steps", "best", "more_seeds", "more_seeds_rule")
                                if k in earlier})

    def multirun(self, step: str, arm: str, args: list[str]) -> Path:
        folder = self.out / step / arm
        command = [sys.executable, "-m", "rto.main", "-m", *args, *self.extra, f"hydra.sweep.dir={folder}"]
        log.info("%s/%s: %s", step, arm, " ".join(command[3:]))
        start = time.perf_counter()
        if not self.dry_run:
            subprocess.run(command, check=True)
        entry = {"step": step, "arm": arm, "command": " ".join(["python", *command[1:]]),
                 "seconds": round(time.perf_counter() - start, 1), **self.settings}
        self.record["steps"] = [e for e in self.record["steps"] if (e["step"], e["arm"]) != (step, arm)] + [entry]
        self.save()
        return folder

    def save(self) -> None:
        # the settings of the latest call, for a reader of the file; the report reads each step's own
        self.record.update(self.settings)
        self.record["seconds"] = round(sum(step["seconds"] for step in self.record["steps"]), 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "protocol.json").write_text(json.dumps(self.record, indent=2) + "\n")

    def seed_list(self, first: int, n: int) -> str:
        return "seed=" + ",".join(str(s) for s in range(first, first + n))

    def tune(self, arm: str) -> dict:
        folder = self.multirun("tune", arm, [f"hparams_search={arm}", f"hydra.sweeper.n_trials={self.trials}",
                                             f"hydra.sweeper.sampler.n_startup_trials={min(3, self.trials)}",
                                             # trials in batches of `jobs` (the same for every arm)
                                             f"hydra.sweeper.n_jobs={self.jobs}"])
        best = {} if self.dry_run else dict(OmegaConf.load(folder / "optimization_results.yaml").best_params)
        self.record["best"][arm] = best
        return best

    def final(self, arm: str, best: dict, first_seed: int, n: int, name: str = "final") -> Path:
        return self.multirun(name, arm, overrides({**ARMS[arm], **best}) + ["eval.prompt_set=test",
                                                                           self.seed_list(first_seed, n)])

    def gap_is_close(self) -> bool:
        """RTO - PPO in the final runs' last validation reading, paired by seed, not significant
        (p >= 0.05, or not measurable: then more seeds are added, which biases nothing). Test prompts are
        never read here: a rule that adds seeds when the test gap looks small would choose on them."""
        scores = {arm: final_scores(self.out / "final", arm, VAL_METRIC) for arm in ("rto", "ppo")}
        diff = paired(scores["rto"], scores["ppo"])
        self.record["more_seeds_rule"] = {"metric": VAL_METRIC, "paired": diff}
        return diff is None or not diff["p"] < 0.05

    def frontier(self, arm: str, best: dict) -> None:
        swept = "dpo.beta" if arm == "dpo" else "beta"
        fixed = {k: v for k, v in {**ARMS[arm], **best}.items() if k != swept}
        self.multirun("frontier", arm, overrides(fixed) + ["eval.prompt_set=test", self.seed_list(FIRST_SEED, self.seeds),
                                                           f"{swept}={','.join(str(b) for b in self.betas)}"])

    def density(self, best: dict) -> None:
        fixed = {k: v for k, v in {**ARMS["rto"], **best}.items() if k != "reward"}
        self.multirun("density", "rto", overrides(fixed) + ["eval.prompt_set=test", self.seed_list(FIRST_SEED, self.seeds),
                                                            f"reward={','.join(DENSITY_VARIANTS)}"])

    def best(self, arm: str) -> dict:
        if arm not in self.record["best"]:
            raise SystemExit(f"{self.out / 'protocol.json'} has no tuned config for {arm}: run the tune step first")
        return self.record["best"][arm]

    def run(self, steps: tuple[str, ...] = STEPS) -> None:
        if "tune" in steps:
            for arm in ARMS:
                self.tune(arm)
        if "final" in steps:
            # decided afresh: the report reads final-more/ only when this run of the step added it
            self.record.pop("more_seeds", None)
            self.record.pop("more_seeds_rule", None)
            self.record["steps"] = [e for e in self.record["steps"] if e["step"] != "final-more"]
            for arm in ARMS:
                self.final(arm, self.best(arm), FIRST_SEED, self.seeds)
            if self.more_seeds and not self.dry_run and self.gap_is_close():
                log.info("RTO - PPO is not significant on validation prompts: %d more seeds per arm",
                         self.more_seeds)
                self.record["more_seeds"] = self.more_seeds
                for arm in ARMS:
                    self.final(arm, self.best(arm), FIRST_SEED + self.seeds, self.more_seeds, name="final-more")
        if "frontier" in steps:
            for arm in ARMS:
                self.frontier(arm, self.best(arm))
        if "density" in steps:
            self.density(self.best("rto"))
        self.save()


def final_scores(folder: Path, arm: str, metric: str = VAL_METRIC) -> dict[int, float]:
    """Seed -> the last value of `metric` (a logged validation reading) of an arm's finished jobs
    under `<folder>/<arm>`."""
    from rto.report.jobs import load_jobs

    scores = {}
    for job in load_jobs(folder / arm, required=False):
        readings = [point[metric] for point in job.val_curve if metric in point]
        if readings:
            scores[job.seed] = readings[-1]
    return scores


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rto.verdict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/verdict") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--trials", type=int, default=6, help="Optuna trials per arm (the same for every arm)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the final, frontier and density runs")
    parser.add_argument("--betas", default="0.03,0.1,0.3,1.0", help="the frontier's beta (and DPO's dpo.beta) values")
    parser.add_argument("--more-seeds", type=int, default=2,
                        help="seeds added to every arm when RTO - PPO is not significant on validation prompts")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help="which steps to run (a later step reads the tuned configs from <out>/protocol.json)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel (joblib launcher, one torch thread each; Optuna trials in batches)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="after --: overrides for every run (e.g. debug=tiny)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.seeds < 2 or args.jobs < 1:
        parser.error("--trials and --jobs must be >= 1 and --seeds >= 2 (paired statistics need two seeds)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    betas = [float(b) for b in args.betas.split(",")]
    steps = tuple(args.steps.split(","))
    if not set(steps) <= set(STEPS):
        parser.error(f"--steps: choose among {', '.join(STEPS)}")
    Protocol(args.out, args.overrides, args.trials, args.seeds, betas, args.more_seeds, args.dry_run,
             args.jobs).run(steps)
    if not args.dry_run and not args.no_report:
        from rto.report import write_report
        write_report(args.out)


if __name__ == "__main__":
    main()
