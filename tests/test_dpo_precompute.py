"""DPO's precomputed reference log-probs equal the ones a step would compute."""

from __future__ import annotations

import torch

from rto.data import PairCollator, load_data
from rto.models.factory import build_policy
from rto.stages.dpo import sequence_logps, with_reference_logps


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
