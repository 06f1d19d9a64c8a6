"""Our PPO numbers against TRL 0.23.1's PPO computation, on one fixed rollout batch.

    python benchmarks/trl_parity.py            # every case below; exit status 1 if a parity check fails
    python benchmarks/trl_parity.py --out benchmarks/results/trl_parity.md

Our side (this venv) samples a rollout with tiny models and runs the real `make_experience`
(sentence reward, reward normalisation off, advantage whitening on), then the first minibatch's
policy and value losses after one perturbation of the actor and critic, through the functions
`PPOModule.update` calls. TRL's side (TRL's own virtualenv, `benchmarks/.venv-trl`, the one
`vs_trl.py` makes; never imports rto) executes TRL's own code on the same tensors: the lines of
`PPOTrainer.train` that turn logits into reference log-probs, rewards into GAE advantages and
returns, and new logits and values into the losses, read from the installed TRL's source and run
as they are. Inputs are the same responses, log-probs, values, scores, KL coefficient, gamma,
lambda, clip ranges, temperature and whitening.

Cases: responses that run to the length limit (TRL's conventions and ours coincide: every number
must agree within 1e-5) and responses that end with EOS (TRL scores the slot after EOS; see
benchmarks/README.md, "Parity with TRL"): there advantages, returns and the policy loss agree for
gamma = lambda = 1, the value loss differs by TRL's extra slot, and lambda < 1 moves TRL's
advantages; those rows are reported, not checked.
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-5
# (first line, last line) of each piece of TRL 0.23.1's PPOTrainer.train that runs on our tensors
TRL_PIECES = {
    "ref_logprobs": ("ref_logits = ref_output.logits[:, context_length - 1 : -1]",
                     "ref_logprob = selective_log_softmax(ref_logits, response)"),
    "advantages": ("response_idxs = torch.arange(responses.shape[1]",
                   "advantages = torch.masked_fill(advantages, padding_mask, 0)"),
    "losses": ("logits = output.logits[:, context_length - 1 : -1]",
               "pg_loss = masked_mean(pg_loss_max, ~padding_mask[micro_batch_inds])"),
}
# name, response end, gamma, lambda, temperature, whether TRL's conventions and ours coincide
CASES = [
    ("full length, gamma 1, lambda 0.95", "full", 1.0, 0.95, 1.0, True),
    ("full length, gamma 0.99, lambda 0.95, T 0.7", "full", 0.99, 0.95, 0.7, True),
    ("EOS, gamma 1, lambda 1", "eos", 1.0, 1.0, 1.0, True),
    ("EOS, gamma 1, lambda 1, T 0.7", "eos", 1.0, 1.0, 0.7, True),
    ("EOS, gamma 1, lambda 0.95", "eos", 1.0, 0.95, 1.0, False),
]
QUANTITIES = ("ref_logprobs", "advantages", "returns", "policy_loss", "value_loss")


# ---- our side ------------------------------------------------------------------------------------------------
def our_side(end: str, gamma: float, lam: float, temperature: float) -> dict:
    sys.path[:0] = [str(HERE.parent)]
    from rto.algos.losses import ppo_policy_loss, value_loss
    from rto.data import load_data
    from rto.data.collate import encode_prompts
    from rto.models.factory import build_policy
    from rto.models.forward import policy_logprobs, sequence_inputs
    from rto.models.retokenize import RewardScorer
    from rto.models.scalar_head import ScalarHeadModel
    from rto.rl.experience import critic_values, make_experience
    from rto.rl.rollout import Rollout, mask_after_eos, sample_responses
    from tests.conftest import compose_config

    cfg = compose_config("reward=sentence", "ppo.normalize_rewards=false", "ppo.whiten_advantages=true",
                         f"ppo.gamma={gamma}", f"ppo.lam={lam}", f"ppo.temperature={temperature}",
                         output_dir=Path(tempfile.mkdtemp()))
    data = load_data(cfg.data)
    tok = data.tokenizer
    torch.manual_seed(0)
    actor, reference, rm_lm = (build_policy(cfg.model, tok).eval() for _ in range(3))
    critic = ScalarHeadModel.from_causal_lm(rm_lm).eval()
    reward_model = RewardScorer(ScalarHeadModel.from_causal_lm(rm_lm).eval(), data.encoder, tok)
    with torch.no_grad():  # a peaked actor: some responses end with EOS before the limit, some do not
        actor.lm_head.weight.mul_(3.0)
    batch = encode_prompts(data.encoder, data.train_prompts[:8])
    eos = tok.eos_token_id if end == "eos" else -1  # -1: never sampled, every response runs to the limit
    ids, mask = sample_responses(actor, batch["prompt_ids"], batch["prompt_mask"], 10, eos, tok.pad_token_id,
                                 temperature, torch.Generator().manual_seed(3))
    if end == "eos":  # whatever the draw: three rows end with EOS before the limit (pads after it)
        for row, column in ((0, 3), (2, 6), (5, 8)):
            ids[row, column] = eos
        mask = mask_after_eos(ids, eos)
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, tok.pad_token_id))
    rollout = Rollout(batch["prompt_ids"], batch["prompt_mask"], ids, mask, data.train_prompts[:8])
    exp = make_experience(rollout, actor=actor, critic=critic, reference=reference, reward_model=reward_model,
                          dpo_policy=None, reward_cfg=cfg.reward, beta=cfg.beta, ppo_cfg=cfg.ppo)
    # the first minibatch after the weights moved a little: ratios away from 1, some clipped
    with torch.no_grad():
        for model in (actor, critic):
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    index = torch.tensor([6, 1, 4, 3])
    mb = exp.minibatch(index)
    new_logprobs, _ = policy_logprobs(actor, mb.batch(), temperature=temperature)
    new_values = critic_values(critic, mb.batch())
    pg_loss, pg_stats = ppo_policy_loss(new_logprobs, mb.logprobs, mb.advantages, mb.response_mask,
                                        cfg.ppo.clip_range)
    vf_loss, vf_stats = value_loss(new_values, mb.values, mb.returns, mb.response_mask, cfg.ppo.value_clip_range)
    full = sequence_inputs(**exp.batch())
    with torch.no_grad():
        tensors = {
            "responses": ids, "mask": mask, "logprobs": exp.logprobs, "scores": exp.score,
            "values": exp.values,  # the critic's output on every slot: TRL masks it itself
            "ref_full_logits": reference(**full).logits, "micro_batch_inds": index,
            "new_full_logits": actor(**sequence_inputs(**mb.batch())).logits,
            "new_full_values": critic(**sequence_inputs(**mb.batch())),
            "ours_ref_logprobs": exp.ref_logprobs, "ours_advantages": exp.advantages, "ours_returns": exp.returns,
            "ours_policy_loss": pg_loss.detach(), "ours_value_loss": vf_loss.detach()}
    settings = {"context_length": ids.new_tensor(batch["prompt_ids"].shape[1]), "kl_coef": cfg.beta,
                "gamma": gamma, "lam": lam, "temperature": temperature, "cliprange": cfg.ppo.clip_range,
                "cliprange_value": cfg.ppo.value_clip_range, "pad_token_id": tok.pad_token_id,
                "rows_ending_early": int((mask.sum(1) < ids.shape[1]).sum()),
                "clipfrac": float(pg_stats["clipfrac"]), "vf_clipfrac": float(vf_stats["vf_clipfrac"])}
    return {**tensors, "settings": settings}


# ---- TRL's side (TRL's venv; no rto import) ----------------------------------------------------------------
def trl_piece(source: str, first: str, last: str) -> types.CodeType:
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith(last))
    return compile(textwrap.dedent("\n".join(lines[start:end + 1])), f"<trl {first[:30]}>", "exec")


def trl_side(inputs: Path, outputs: Path) -> None:
    import trl
    from trl.trainer import ppo_trainer
    from trl.trainer.utils import first_true_indices

    d = torch.load(inputs, weights_only=False)
    s = d["settings"]
    source = inspect.getsource(ppo_trainer.PPOTrainer.train)
    pieces = {name: trl_piece(source, *marks) for name, marks in TRL_PIECES.items()}
    args = types.SimpleNamespace(kl_coef=s["kl_coef"], kl_estimator="k1", whiten_rewards=False, gamma=s["gamma"],
                                 lam=s["lam"], temperature=s["temperature"], cliprange=s["cliprange"],
                                 cliprange_value=s["cliprange_value"], vf_coef=1.0)
    ns = dict(vars(ppo_trainer), args=args, context_length=int(s["context_length"]), response=d["responses"],
              ref_output=types.SimpleNamespace(logits=d["ref_full_logits"].clone()))
    exec(pieces["ref_logprobs"], ns)
    # TRL finds each response's last token as the first pad minus one; the mask says the same here
    sequence_lengths = first_true_indices(d["mask"] == 0) - 1
    ns.update(responses=d["responses"], logprobs=d["logprobs"].clone(), ref_logprobs=ns["ref_logprob"],
              values=d["values"].clone(), scores=d["scores"].clone(), sequence_lengths=sequence_lengths)
    exec(pieces["advantages"], ns)
    inds = d["micro_batch_inds"]
    ns.update(output=types.SimpleNamespace(logits=d["new_full_logits"].clone()),
              vpred_temp=d["new_full_values"].unsqueeze(-1), micro_batch_inds=inds,
              mb_responses=d["responses"][inds], mb_logprobs=ns["logprobs"][inds], mb_values=ns["values"][inds],
              mb_return=ns["returns"][inds], mb_advantage=ns["advantages"][inds])
    exec(pieces["losses"], ns)
    torch.save({"version": trl.__version__, "ref_logprobs": ns["ref_logprob"], "advantages": ns["advantages"],
                "returns": ns["returns"], "policy_loss": ns["pg_loss"].detach(), "value_loss": ns["vf_loss"].detach(),
                "padding_mask": ns["padding_mask"]}, outputs)


# ---- the comparison ------------------------------------------------------------------------------------------
def compare(ours: dict, theirs: dict) -> dict[str, float]:
    real = ours["mask"].bool()
    diffs = {}
    for name in QUANTITIES:
        a, b = ours[f"ours_{name}"], theirs[name]
        diffs[name] = float((a[real] - b[real]).abs().max() if a.dim() == 2 else (a - b).abs())
    return diffs


def run_case(trl_python: Path, case: tuple, workdir: Path) -> dict:
    name, end, gamma, lam, temperature, coincide = case
    ours = our_side(end, gamma, lam, temperature)
    inputs, outputs = workdir / "batch.pt", workdir / "trl.pt"
    torch.save(ours, inputs)
    subprocess.run([str(trl_python), str(Path(__file__).resolve()), "--trl-side", str(inputs), str(outputs)],
                   check=True, cwd=workdir)
    theirs = torch.load(outputs, weights_only=False)
    diffs = compare(ours, theirs)
    # where the conventions differ by design, only these must agree (see the module docstring)
    checked = QUANTITIES if end == "full" else ("ref_logprobs", "advantages", "returns", "policy_loss")
    ok = all(diffs[q] <= TOLERANCE for q in checked) if coincide else None
    return {"case": name, "diffs": diffs, "checked": list(checked) if coincide else [], "ok": ok,
            "rows_ending_early": ours["settings"]["rows_ending_early"], "trl": theirs["version"],
            "clipfrac": ours["settings"]["clipfrac"], "vf_clipfrac": ours["settings"]["vf_clipfrac"],
            "policy_loss": float(ours["ours_policy_loss"]), "value_loss": float(ours["ours_value_loss"])}


def table(results: list[dict]) -> str:
    rows = ["| case | rows ending early | clipped (policy / value) | "
            + " | ".join(f"max abs diff {q}" for q in QUANTITIES) + " | parity |", "|---" * (4 + len(QUANTITIES)) + "|"]
    for r in results:
        cells = [f"{r['diffs'][q]:.1e}" + ("" if q in r["checked"] else " (not checked)") for q in QUANTITIES]
        verdict = {True: "yes", False: "**NO**", None: "reported only"}[r["ok"]]
        rows.append(f"| {r['case']} | {r['rows_ending_early']} of 8 | {r['clipfrac']:.2f} / {r['vf_clipfrac']:.2f} | "
                    + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(rows) + f"\n\nTRL {results[0]['trl']}; tolerance {TOLERANCE}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) and the numbers (JSON) here")
    parser.add_argument("--trl-side", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_side:
        return trl_side(*args.trl_side)
    sys.path[:0] = [str(HERE)]
    from vs_trl import ensure_venv

    trl_python = ensure_venv("ppo")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(trl_python, case, Path(tmp)) for case in CASES]
    text = table(results)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"`python benchmarks/trl_parity.py --out {args.out}`\n\n{text}\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    sys.exit(0 if all(r["ok"] is not False for r in results) else 1)


if __name__ == "__main__":
    main()
