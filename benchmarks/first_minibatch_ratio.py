"""How far the first PPO minibatch's ratio pi / pi_old is from 1 on SmolLM2-135M (and the critic's
new values from its old ones): the tests check 1e-5 on tiny models; this measures a real one.

    python benchmarks/first_minibatch_ratio.py                       # the defaults (cpu_prepack on)
    python benchmarks/first_minibatch_ratio.py cpu_prepack.enabled=false     # any Hydra overrides

One iteration of the real `PPOModule` under the stage's speed-ups (`rto.context.stage_speedups`), the
issue's setting (`iteration_worker.py`: the GGUF model offline, the LoRA of `experiment=sentiment_smollm2`,
16 prompts x 32 new tokens, reward=token, one epoch over minibatches of 8). Prints the maxima over
the first minibatch's response tokens.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from iteration_worker import build_module, compose_cfg, task_prompts  # noqa: E402
from profile_iteration import experiment_lora  # noqa: E402
from rto.context import stage_speedups  # noqa: E402
from rto.data import PromptCollator  # noqa: E402
from rto.rl.first_minibatch import record_first_minibatch  # noqa: E402


def main() -> None:
    overrides = sys.argv[1:]
    if {"-h", "--help"} & set(overrides):
        print(__doc__)
        return
    seen = record_first_minibatch()
    torch.set_num_threads(2)
    spec = {"model": "smollm2-135m-gguf", "lora": experiment_lora(), "prompts": 16, "new_tokens": 32, "epochs": 1,
            "minibatch": 8, "reward": "token", "threads": 2, "overrides": overrides}
    try:
        cfg = compose_cfg(spec, HERE.parent / "conf")
    except HydraException as err:  # a mistyped override: the message, not a traceback
        raise SystemExit(f"first_minibatch_ratio.py: {err}")
    L.seed_everything(cfg.seed, verbose=False)
    tok, encoder, prompts = task_prompts(cfg, spec)
    with tempfile.TemporaryDirectory() as tmp:
        module = build_module(cfg, spec, tok, encoder, Path(tmp))
        loader = DataLoader(prompts[:16], batch_size=16, collate_fn=PromptCollator(encoder))
        trainer = instantiate(cfg.trainer, logger=False, max_epochs=1, max_steps=1, enable_progress_bar=False)
        with stage_speedups(cfg, module):
            trainer.fit(module, loader)
    print(json.dumps({"overrides": overrides, "max |pi/pi_old - 1|": seen["ratio"],
                      "max |V - V_old|": seen["values"]}))


if __name__ == "__main__":
    main()
