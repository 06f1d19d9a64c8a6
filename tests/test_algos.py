"""Hand-computed checks of rto.algos (arithmetic in the comments).

Recurring traps, each of which broke a well-known framework: left-padded prompts, responses without
EOS, pad id == eos id, NaN in masked slots.
"""

import math

import pytest
import torch

from rto.algos.advantages import RunningMoments, gae
from rto.algos.logprobs import entropy_from_logits, response_logprobs, shift_positions
from rto.algos.losses import (
    bradley_terry_loss,
    dpo_loss,
    explained_variance,
    ppo_policy_loss,
    value_loss,
)
from rto.algos.masked import (
    last_token_index,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    sequence_lengths,
)
from rto.algos.rewards import (
    REWARDS,
    clamp_score,
    compute_rewards,
    delayed_dpo_rewards,
    kl_penalty,
    semi_token_rewards,
    sentence_rewards,
    shaping_dpo_rewards,
    token_rewards,
)

NAN = float("nan")


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---------------------------------------------------------------- masked


@pytest.mark.parametrize("as_float", [False, True])
def test_masked_reductions_ignore_nan(as_float):
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, NAN, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float32 if as_float else torch.bool)
    close(masked_sum(x, mask), 7.0)  # 1 + 2 + 4
    close(masked_mean(x, mask), 7.0 / 3)
    close(masked_sum(x, mask, dim=-1), [3.0, 4.0])
    close(masked_mean(x, mask, dim=-1), [1.5, 4.0])
    # deviations from 7/3: -4/3, -1/3, 5/3 -> squares sum 42/9 = 14/3; /3 = 14/9, /2 = 7/3
    close(masked_var(x, mask, unbiased=False), 14.0 / 9)
    close(masked_var(x, mask), 7.0 / 3)
    m, s = 7.0 / 3, math.sqrt(7.0 / 3)
    z = [(1 - m) / s, (2 - m) / s, (4 - m) / s]
    close(masked_whiten(x, mask), [[z[0], z[1], 0.0], [z[2], 0.0, 0.0]], atol=1e-5)
    # shift_mean=False adds the mean back
    close(masked_whiten(x, mask, shift_mean=False), [[z[0] + m, z[1] + m, 0.0], [z[2] + m, 0.0, 0.0]], atol=1e-5)


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    close(masked_mean(torch.tensor([NAN, 1.0]), torch.tensor([False, False])), 0.0)


def test_last_token_index_and_lengths():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])  # third row: truncated, no EOS
    assert last_token_index(mask).tolist() == [1, 0, 2]
    assert last_token_index(mask.float()).tolist() == [1, 0, 2]
    assert sequence_lengths(mask).tolist() == [2, 1, 3]
    with pytest.raises(ValueError):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))


# ---------------------------------------------------------------- logprobs


def test_shift_positions_left_padding():
    attention = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert shift_positions(attention).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def _logits_and_ids():
    """P = 2 (row 0 left-padded prompt), R = 2, V = 3; eos id = pad id = 2.

    Response token t is scored by logits at P - 1 + t = 1 + t:
      position 1: [log 2, 0, 0] -> logsumexp = log 4 -> log p = [-log 2, -log 4, -log 4]
      position 2: [0, 0, 0]     -> log p = -log 3 for every id
    Positions 0 (left pad / prompt) and 3 (after the response) are never used: NaN there.
    Row 1's slot 1 is padding: NaN logits there too.
    """
    logits = torch.full((2, 4, 3), NAN)
    logits[:, 1] = torch.tensor([math.log(2), 0.0, 0.0])
    logits[0, 2] = 0.0
    ids = torch.tensor([[0, 2], [1, 2]])  # row 0: token 0 then a real EOS; row 1: token 1 then pad (== eos)
    mask = torch.tensor([[1, 1], [1, 0]])
    return logits, ids, mask


def test_response_logprobs_hand_values_with_pad_equal_eos_and_nan():
    logits, ids, mask = _logits_and_ids()
    logp = response_logprobs(logits, ids, prompt_len=2, mask=mask)
    assert logp.dtype == torch.float32
    # row 0: [-log 2, -log 3] (its EOS id 2 is real); row 1: [-log 4, 0] (same id 2, but masked)
    close(logp, [[-math.log(2), -math.log(3)], [-math.log(4), 0.0]])
    # only the mask matters: a garbage id in the masked slot changes nothing
    garbage = ids.clone()
    garbage[1, 1] = -100
    close(response_logprobs(logits.bfloat16(), garbage, 2, mask.bool()), logp, atol=2e-2)
    close(response_logprobs(logits, garbage, 2, mask.bool()), logp)


def test_response_logprobs_without_eos_uses_every_slot():
    logits, ids, _ = _logits_and_ids()
    logits[1, 2] = 0.0
    full = torch.ones(2, 2)  # both responses truncated: no EOS, all slots real
    close(response_logprobs(logits, ids, 2, full), [[-math.log(2), -math.log(3)], [-math.log(4), -math.log(3)]])


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf], [math.log(2), 0.0, 0.0]])
    # uniform: log 3; one-hot: 0 (not NaN); p = [1/2, 1/4, 1/4]: 1/2 log 2 + 2 * 1/4 log 4 = 1.5 log 2
    close(entropy_from_logits(logits), [math.log(3), 0.0, 1.5 * math.log(2)])


# ---------------------------------------------------------------- rewards


def test_kl_penalty_kinds():
    logp = torch.tensor([[-1.0, -2.0, NAN]])
    ref = torch.tensor([[-1.5, -1.0, NAN]])
    mask = torch.tensor([[1, 1, 0]])
    close(kl_penalty(logp, ref, mask), [[0.5, -1.0, 0.0]])  # logp - ref
    # log rho = ref - logp = [-0.5, 1]: (e^-0.5 - 1) + 0.5 = e^-0.5 - 0.5; (e - 1) - 1 = e - 2
    close(kl_penalty(logp, ref, mask, "k3"), [[math.exp(-0.5) - 0.5, math.e - 2, 0.0]])
    close(kl_penalty(logp, ref, mask, "abs"), [[0.5, 1.0, 0.0]])
    close(kl_penalty(logp, ref, mask, "mse"), [[0.125, 0.5, 0.0]])
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, mask, "k2")


def _reward_inputs(nan_padding=True):
    """Row 0: truncated (no EOS, mask all ones). Row 1: 2 real tokens then padding.

    k = logp - ref:        row 0 [0.5, 0, -1],   row 1 [0, 1, -]
    d = dpo - ref:         row 0 [0.5, 1, 0],    row 1 [0.5, -1, -]
    """
    pad = NAN if nan_padding else 0.0
    return dict(
        score=torch.tensor([2.0, -1.0]),
        logprobs=torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, pad]]),
        ref_logprobs=torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -2.0, pad]]),
        dpo_logprobs=torch.tensor([[-1.0, -1.0, -2.0], [-0.5, -3.0, pad]]),
        mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
        beta=0.1,
        dpo_scale=0.5,
        rm_scale=2.0,
    )


def test_sentence_rewards_score_at_last_real_token():
    kw = _reward_inputs()
    kw = {k: kw[k] for k in ("score", "logprobs", "ref_logprobs", "mask", "beta")}
    # row 0: -0.1 * [0.5, 0, -1] = [-0.05, 0, 0.1]; + score 2 at index 2
    # row 1: -0.1 * [0, 1] = [0, -0.1]; + score -1 at index 1 (the last REAL token, not R - 1)
    close(sentence_rewards(**kw), [[-0.05, 0.0, 2.1], [0.0, -1.1, 0.0]])


def test_token_rewards_hand_values_and_clip():
    kw = _reward_inputs()
    # row 0: 0.5 * [0.5, 1, 0] - 0.1 * [0.5, 0, -1] = [0.2, 0.5, 0.1]; + 2 * 2 at index 2
    # row 1: 0.5 * [0.5, -1] - 0.1 * [0, 1] = [0.25, -0.6]; + 2 * -1 at index 1
    close(token_rewards(**kw), [[0.2, 0.5, 4.1], [0.25, -2.6, 0.0]])
    # clip the DPO reward 0.5*d at +-0.3: row 0 [0.25, 0.5, 0] -> 0.3 at index 1; row 1 [0.25, -0.5] -> -0.3 - 0.1 - 2
    close(token_rewards(**kw, dpo_clip=0.3), [[0.2, 0.3, 4.1], [0.25, -2.4, 0.0]])


def test_clamp_score():
    close(clamp_score(torch.tensor([15.0, -12.0, 3.0]), 10.0), [10.0, -10.0, 3.0])
    close(clamp_score(torch.tensor([15.0]), None), [15.0])


def test_ddpo_delays_the_dpo_sum_to_the_last_token():
    kw = _reward_inputs()
    # row 0: DPO sum 0.5 * (0.5 + 1 + 0) = 0.75 -> [-0.05, 0, 0.1 + 0.75 + 4]
    # row 1: DPO sum 0.5 * (0.5 - 1) = -0.25  -> [0, -0.1 - 0.25 - 2, 0]
    ddpo = delayed_dpo_rewards(**kw)
    close(ddpo, [[-0.05, 0.0, 4.85], [0.0, -2.35, 0.0]])
    close(ddpo.sum(-1), token_rewards(**kw).sum(-1))  # 4.8 and -2.35: same return, less density
    close(delayed_dpo_rewards(**kw, dpo_clip=0.6).sum(-1), token_rewards(**kw, dpo_clip=0.6).sum(-1))


def test_semi_token_rewards_sum_per_segment():
    kw = _reward_inputs()
    # row 0 ends after token 0; the last token closes the second segment: ends = [1, 0, 1]
    #   DPO 0.5 * d = [0.25, 0.5, 0] -> [0.25, 0, 0.5]; minus KL [0.05, 0, -0.1]; + 4 at index 2
    # row 1 marks only a padded slot (ignored); the last real token (1) closes the only segment
    #   DPO [0.25, -0.5] -> [0, -0.25]; minus KL [0, 0.1]; + -2 at index 1
    segment_end = torch.tensor([[True, False, False], [False, False, True]])
    semi = semi_token_rewards(**kw, segment_end=segment_end)
    close(semi, [[0.2, 0.0, 4.6], [0.0, -2.35, 0.0]])
    close(semi.sum(-1), token_rewards(**kw).sum(-1))
    # every token its own segment == RTO's dense reward
    close(semi_token_rewards(**kw, segment_end=torch.ones(2, 3, dtype=torch.bool)), token_rewards(**kw))


def test_shaping_return_telescopes_to_the_sentence_return():
    kw = _reward_inputs()
    # row 0: [0.25 - 0.05, 0.5, 0 + 0.1 + 4 - 0.75] ; row 1: [0.25, -0.5 - 0.1 - 2 + 0.25, 0]
    shaped = shaping_dpo_rewards(**kw)
    close(shaped, [[0.2, 0.5, 3.35], [0.25, -2.35, 0.0]])
    # return = rm_scale * score - beta * sum k: 4 + 0.05 = 4.05 and -2 - 0.1 = -2.1
    close(shaped.sum(-1), [4.05, -2.1])
    sentence = compute_rewards("sentence", **{**kw, "score": kw["rm_scale"] * kw["score"]})
    close(shaped.sum(-1), sentence.sum(-1))
    # on random inputs too
    g = torch.Generator().manual_seed(0)
    rand = {k: torch.randn(4, 6, generator=g) for k in ("logprobs", "ref_logprobs", "dpo_logprobs")}
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5, [1] * 5 + [0]])
    args = dict(score=torch.randn(4, generator=g), mask=mask, beta=0.05, dpo_scale=0.3, rm_scale=1.5, **rand)
    kl_sum = kl_penalty(rand["logprobs"], rand["ref_logprobs"], mask).sum(-1)
    close(shaping_dpo_rewards(**args).sum(-1), 1.5 * args["score"] - 0.05 * kl_sum, atol=1e-5)


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_rewards_nan_in_padding_is_harmless(name):
    segment_end = torch.tensor([[False, True, False], [True, False, True]])
    with_nan = compute_rewards(name, **_reward_inputs(nan_padding=True), segment_end=segment_end, dpo_clip=0.6)
    without = compute_rewards(name, **_reward_inputs(nan_padding=False), segment_end=segment_end, dpo_clip=0.6)
    assert torch.isfinite(with_nan).all()
    assert with_nan[1, 2].item() == 0.0
    close(with_nan, without)


def test_compute_rewards_dispatch():
    kw = _reward_inputs()
    # sentence ignores the DPO-only arguments
    expected = sentence_rewards(kw["score"], kw["logprobs"], kw["ref_logprobs"], kw["mask"], kw["beta"])
    close(compute_rewards("sentence", **kw), expected)
    close(compute_rewards("token", **kw, dpo_clip=0.6), token_rewards(**kw, dpo_clip=0.6))
    with pytest.raises(TypeError):
        compute_rewards("sentence", **kw, betta=0.1)  # typos are not swallowed
    with pytest.raises(ValueError):
        compute_rewards("dense", **kw)


# ---------------------------------------------------------------- advantages


def test_gae_gamma_one_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 2.0, NAN]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 0 truncated (no EOS), row 1 right-padded
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: d2 = 2 + 0 - 1.5 = 0.5 -> A2 = 0.5
    #        d1 = 0 + 1.5 - 1 = 0.5 -> A1 = 0.5 + 0.95 * 0.5 = 0.975
    #        d0 = 1 + 1 - 0.5 = 1.5 -> A0 = 1.5 + 0.95 * 0.975 = 2.42625
    # row 1: V after the last real token is 0: d1 = 2 + 0 - 1 = 1 -> A1 = 1
    #        d0 = 1 + 1 - 0.5 = 1.5 -> A0 = 1.5 + 0.95 * 1 = 2.45
    close(adv, [[2.42625, 0.975, 0.5], [2.45, 1.0, 0.0]])
    close(ret, [[2.92625, 1.975, 2.0], [2.95, 2.0, 0.0]])  # A + V, 0 in padding


def test_gae_gamma_below_one_and_lambda_one():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3)
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.95)
    # d2 = 2 - 1.5 = 0.5 -> A2 = 0.5
    # d1 = 0 + 0.9 * 1.5 - 1 = 0.35 -> A1 = 0.35 + 0.855 * 0.5 = 0.7775
    # d0 = 1 + 0.9 * 1 - 0.5 = 1.4  -> A0 = 1.4 + 0.855 * 0.7775 = 2.0647625
    close(adv, [[2.0647625, 0.7775, 0.5]])
    # lambda = gamma = 1: returns are the rewards-to-go 3, 2, 2 whatever the values
    _, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(ret, [[3.0, 2.0, 2.0]])


def test_running_moments():
    rm = RunningMoments()
    rm.update(torch.tensor([1.0, 2.0, 3.0]))
    mean, std = rm.update(torch.tensor([[4.0, 5.0, NAN]]), mask=torch.tensor([[1, 1, 0]]))
    assert (mean, std) == pytest.approx((4.5, 0.5))  # batch {4, 5}
    # 1..5: mean 3, population variance (4 + 1 + 0 + 1 + 4) / 5 = 2
    assert (rm.mean, rm.var, rm.count) == pytest.approx((3.0, 2.0, 5))
    close(rm.normalize(torch.tensor([3.0, 5.0, NAN]), mask=torch.tensor([1, 1, 0])), [0.0, 2 / math.sqrt(2), 0.0])


# ---------------------------------------------------------------- losses


def test_bradley_terry_loss():
    loss, acc = bradley_terry_loss(torch.tensor([0.3, 0.3]), torch.tensor([0.3, 0.3]))
    close(loss, math.log(2))  # -log sigmoid(0)
    close(acc, 0.0)  # ties are not correct
    loss, acc = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    close(loss, (math.log(1 + math.exp(-1)) + math.log(2)) / 2)
    close(acc, 0.5)


def test_dpo_loss():
    x = torch.tensor([-2.0])
    loss, chosen, rejected = dpo_loss(x, x, x, x, beta=0.1)
    close(loss, math.log(2))
    close(chosen, [0.0])
    # chosen log-ratio -1 - (-2) = 1, rejected -3 - (-2) = -1: logits 0.5 * (1 + 1) = 1
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), x, x, beta=0.5)
    close(loss, math.log(1 + math.exp(-1)))  # 0.3133
    close(chosen, [0.5])
    close(rejected, [-0.5])


def test_ppo_policy_loss_clip_fraction():
    # old log-probs 0, so ratio = exp(logp); clip 0.2; last slot is padding (NaN)
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.5])
    logp = torch.cat([ratios.log(), torch.tensor([NAN])]).unsqueeze(0).requires_grad_()
    old = torch.zeros(1, 5)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    # per token max(-A rho, -A clip(rho)):
    #   rho 1.5, A 1:  max(-1.5, -1.2) = -1.2  (clipped)
    #   rho 0.5, A 1:  max(-0.5, -0.8) = -0.5
    #   rho 1.1, A -1: max(1.1, 1.1)   = 1.1
    #   rho 0.5, A -1: max(0.5, 0.8)   = 0.8   (clipped)
    # mean = (-1.2 - 0.5 + 1.1 + 0.8) / 4 = 0.05; clipfrac = 2 / 4
    close(loss, 0.05)
    close(stats["clipfrac"], 0.5)
    # sum log rho = 0.405465 - 0.693147 + 0.095310 - 0.693147 = -0.885519
    # k1 = mean(old - new) = 0.885519 / 4; k3 = mean(rho - 1 - log rho) = (-0.4 + 0.885519) / 4
    log_sum = math.log(1.5) + 2 * math.log(0.5) + math.log(1.1)
    close(stats["approx_kl_k1"], -log_sum / 4)
    close(stats["approx_kl_k3"], (-0.4 - log_sum) / 4)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    # clipped tokens get no gradient; rho 0.5 / A 1 gets -A * rho / 4 = -0.125; padding 0
    close(logp.grad[0, [0, 1, 3, 4]], [0.0, -0.125, 0.0, 0.0])


def test_value_loss_clip():
    values = torch.tensor([[1.5, 0.9, 2.0, NAN]])
    old = torch.tensor([[1.0, 1.0, 1.0, NAN]])
    returns = torch.tensor([[2.0, 0.0, 1.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.2)
    # token 0: (1.5-2)^2 = 0.25, clipped V 1.2: (1.2-2)^2 = 0.64 -> 0.64 (clipped term wins)
    # token 1: 0.81, V within the clip: 0.81 -> 0.81
    # token 2: (2-1)^2 = 1, clipped V 1.2: 0.04 -> 1
    # loss = 0.5 * (0.64 + 0.81 + 1) / 3 = 0.408333; vf_clipfrac = 1/3
    close(loss, 0.5 * 2.45 / 3)
    close(stats["vf_clipfrac"], 1 / 3)
    loss, _ = value_loss(values, old, returns, mask, clip_range=None)
    close(loss, 0.5 * (0.25 + 0.81 + 1.0) / 3)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # residual [0, 1, 0]: population var 2/9; var(R) = 2/3 -> 1 - 1/3 = 2/3
    close(explained_variance(torch.tensor([[1.0, 1.0, 3.0, NAN]]), returns, mask), 2 / 3)
    close(explained_variance(returns + 1.0, returns, mask), 1.0)  # constant offset: residual var 0
    close(explained_variance(torch.zeros(1, 4), returns, mask), 0.0)
    assert torch.isnan(explained_variance(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2)))
