"""DPO's precomputed reference log-probs equal the ones a step would compute, and with them the DPO
module holds no reference (which would otherwise be moved to the training device)."""

from __future__ import annotations

import pytest
import torch

from rto.data import PairCollator, load_data
from rto.main import train
from rto.models.factory import build_policy
from rto.recipes import dpo as dpo_recipe
from rto.stages import DPOModule
from rto.stages.dpo import sequence_logps, with_reference_logps
from tests.conftest import compose_config
from tests.csv_log import logged


def test_precomputed_reference_logps_match_a_per_step_forward(make_cfg):
    cfg = make_cfg()
    data = load_data(cfg.data)
    torch.manual_seed(0)
    reference = build_policy(cfg.model, data.tokenizer).eval()
    collate = PairCollator(data.encoder)
    rows = data.train_pairs[:10]
    # precomputed in batches of 4, consumed in a batch of 6 shuffled rows: padding differs, numbers must not
    cached = with_reference_logps(reference, rows, collate, batch_size=4)
    picked = [cached[i] for i in (7, 2, 9, 0, 5, 3)]
    batch = collate(picked)
    with torch.no_grad():
        expected = sequence_logps(reference, collate([rows[i] for i in (7, 2, 9, 0, 5, 3)]))
    assert batch["ref_logps"].shape == (12,)
    torch.testing.assert_close(batch["ref_logps"], expected, atol=1e-4, rtol=1e-5)
    assert "ref_logps" not in collate(rows[:3])  # plain rows: the step computes them itself


@pytest.mark.parametrize("overrides, holds_reference", [
    ((), False),                          # precomputed for the training and the held-out pairs
    (("dpo=simpo",), False),              # reference-free: nothing to compute
    (("dpo.precompute_ref=false",), True),  # each step's forward reads it
])
def test_the_dpo_module_holds_a_reference_only_where_a_step_reads_it(upstream, tmp_path, monkeypatch,
                                                                      overrides, holds_reference):
    """A reference the module holds is moved to the training device with it: only where a step runs it.
    The held-out loss of the precomputed run is the per-step run's (float rounding apart)."""
    built = []

    class Spy(DPOModule):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)
    monkeypatch.setattr(dpo_recipe, "DPOModule", Spy)
    out = tmp_path / "run"
    train(compose_config("stage=dpo", f"sft.checkpoint={upstream / 'sft'}", *overrides, output_dir=out))
    (module,) = built
    assert (module.reference is not None) == holds_reference
    assert logged(out, "dpo/val_loss")  # validation ran, on precomputed log-probs where none is held


def test_precomputed_and_per_step_references_give_the_same_held_out_metrics(upstream, tmp_path):
    runs = {}
    for precompute in (True, False):
        out = tmp_path / str(precompute)
        train(compose_config("stage=dpo", f"sft.checkpoint={upstream / 'sft'}", f"dpo.precompute_ref={precompute}",
                             output_dir=out))
        runs[precompute] = {key: logged(out, key) for key in ("dpo/val_loss", "dpo/val_reward_margin")}
    for key, values in runs[True].items():
        assert values and runs[False][key], key  # validation ran in both
        assert values == pytest.approx(runs[False][key], rel=1e-5, abs=1e-6), key


def test_a_resume_checkpoint_with_a_reference_loads_into_a_module_without_one(make_cfg):
    """Resume checkpoints written while the module held its reference (before the held-out pairs'
    reference log-probs were precomputed too) carry `reference.*` weights: they resume, those dropped."""
    cfg = make_cfg()
    data = load_data(cfg.data)
    policy, reference = (build_policy(cfg.model, data.tokenizer) for _ in range(2))
    state = DPOModule(policy, reference, 0.1, torch.optim.AdamW).state_dict()
    assert any(key.startswith("reference.") for key in state)
    without = DPOModule(build_policy(cfg.model, data.tokenizer), None, 0.1, torch.optim.AdamW)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        without.load_state_dict(state)  # what Lightning's strict restore would meet
    checkpoint = {"state_dict": dict(state)}
    without.on_load_checkpoint(checkpoint)
    without.load_state_dict(checkpoint["state_dict"])
    assert all(torch.equal(value, state[key]) for key, value in without.state_dict().items())
