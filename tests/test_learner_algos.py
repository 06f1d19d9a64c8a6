"""Hand-computed checks of the critic-free learners' pure functions (returns-to-go, RLOO and GRPO
baselines), the KL loss term, the adaptive KL controller and the DPO-family losses.

The batch: 2 prompts x k = 2 samples, R = 3, eos id = pad id = 1 (masks come from `mask_after_eos`,
so the EOS is a real token and the padding after it, the same id, is not); one response without
EOS (truncated); NaN in every masked slot of the rewards.
"""

import math

import pytest
import torch

from rto.algos.advantages import (episode_returns, grpo_advantages, no_baseline, returns_to_go,
                                  rloo_advantages)
from rto.algos.kl_control import KLController
from rto.algos.losses import dpo_loss, ipo_loss, kl_loss, simpo_loss
from rto.algos.masked import masked_whiten
from rto.rl.rollout import mask_after_eos

NAN = float("nan")
EOS = PAD = 1
S2 = math.sqrt(2.0)


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def batch():
    ids = torch.tensor([[5, 6, 7],      # no EOS: truncated at R = 3
                        [5, 1, 1],      # EOS at slot 1, then pad (== eos id)
                        [1, 1, 1],      # EOS first: a one-token response
                        [6, 6, 1]])     # EOS last
    mask = mask_after_eos(ids, EOS)
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
    rewards = torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, NAN], [2.0, NAN, NAN], [-1.0, 0.5, 4.5]])
    return rewards, mask


def test_returns_to_go_by_hand():
    rewards, mask = batch()
    # gamma 1: row 0 [3, 3, 3]; row 1 [2, 1, -]; row 2 [2, -, -]; row 3 [4, 5, 4.5]
    returns = returns_to_go(rewards, mask)
    close(returns, [[3, 3, 3], [2, 1, 0], [2, 0, 0], [4, 5, 4.5]])
    close(episode_returns(returns, mask), [3, 2, 2, 4])
    # gamma 0.5: row 3: G_3 = 4.5, G_2 = 0.5 + 2.25 = 2.75, G_1 = -1 + 1.375 = 0.375
    close(returns_to_go(rewards, mask, gamma=0.5)[3], [0.375, 2.75, 4.5])
    close(no_baseline(returns, mask), returns)


@pytest.mark.parametrize("baseline, expected", [
    # episode: subtract the other sample's G_1 (group 0: 3 and 2; group 1: 2 and 4)
    ("episode", [[1, 1, 1], [-1, -2, 0], [-2, 0, 0], [2, 3, 2.5]]),
    # position: subtract the other sample's G_h at the same h (0 past its end)
    ("position", [[1, 2, 3], [-1, -2, 0], [-2, 0, 0], [2, 5, 4.5]]),
])
def test_rloo_baselines_by_hand(baseline, expected):
    rewards, mask = batch()
    close(rloo_advantages(returns_to_go(rewards, mask), mask, group_size=2, baseline=baseline), expected)


def test_rloo_leaves_one_out_of_three():
    # one group of k = 3 one-token responses with returns 1, 4, 7: baselines 5.5, 4, 2.5
    returns, mask = torch.tensor([[1.0, NAN], [4.0, NAN], [7.0, NAN]]), torch.tensor([[1, 0], [1, 0], [1, 0]])
    close(rloo_advantages(returns, mask, group_size=3), [[-4.5, 0], [0, 0], [4.5, 0]])


@pytest.mark.parametrize("baseline, expected", [
    # episode: group 0 {3, 2}: mean 2.5, std (Bessel) 1/sqrt 2; group 1 {2, 4}: mean 3, std sqrt 2
    ("episode", [[0.5 * S2] * 3, [-0.5 * S2, -1.5 * S2, 0], [-1 / S2, 0, 0], [1 / S2, S2, 1.5 / S2]]),
    # position, group 0: h=1 {3, 2}, h=2 {3, 1}: mean 2, std sqrt 2, h=3 {3, 0}: mean 1.5, std 1.5 sqrt 2
    ("position", [[1 / S2, 1 / S2, 1 / S2], [-1 / S2, -1 / S2, 0], [-1 / S2, 0, 0], [1 / S2, 1 / S2, 1 / S2]]),
])
def test_grpo_group_normalisation_by_hand(baseline, expected):
    rewards, mask = batch()
    returns = returns_to_go(rewards, mask)
    close(grpo_advantages(returns, mask, group_size=2, baseline=baseline, eps=0.0), expected)


def test_grpo_without_std_and_with_identical_samples():
    rewards, mask = batch()
    returns = returns_to_go(rewards, mask)
    close(grpo_advantages(returns, mask, 2, scale=False)[0], [0.5, 0.5, 0.5])  # mean only (Dr. GRPO)
    same = torch.tensor([[2.0], [2.0]])
    close(grpo_advantages(same, torch.ones(2, 1), 2), [[0.0], [0.0]])  # no spread: 0, not NaN


def test_group_baselines_refuse_broken_groups():
    returns, mask = torch.zeros(3, 2), torch.ones(3, 2)
    with pytest.raises(ValueError, match="whole groups"):
        rloo_advantages(returns, mask, group_size=2)
    with pytest.raises(ValueError, match=">= 2 samples"):
        grpo_advantages(returns, mask, group_size=1)
    with pytest.raises(ValueError, match="unknown group baseline"):
        grpo_advantages(torch.zeros(2, 2), torch.ones(2, 2), 2, baseline="token")


def test_reinforce_pp_is_globally_whitened_returns():
    rewards, mask = batch()
    returns = returns_to_go(rewards, mask)
    # real returns: 3, 3, 3, 2, 1, 2, 4, 5, 4.5 -> mean 27.5 / 9
    whitened = masked_whiten(no_baseline(returns, mask), mask)
    real = torch.tensor([3, 3, 3, 2, 1, 2, 4, 5, 4.5])
    close(whitened[mask.bool()], (real - real.mean()) / real.std(), atol=1e-4)


def test_kl_loss_is_k3_with_its_gradient():
    # pi = 0.5, pi_ref = 0.25: rho = 0.5, k3 = 0.5 - 1 - log 0.5 = 0.19315; d k3 / d log pi = 1 - rho = 0.5
    logprobs = torch.tensor([[math.log(0.5), 0.0]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), NAN]])
    loss = kl_loss(logprobs, ref, torch.tensor([[1, 0]]))
    close(loss, -0.5 + math.log(2))
    loss.backward()
    close(logprobs.grad, [[0.5, 0.0]])


def test_ipo_and_simpo_by_hand():
    # h = (-1 - -2) - (-3 - -2) = 2; tau = 0.25: target 2, loss 0; tau = 0.5: (2 - 1)^2 = 1
    args = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    close(ipo_loss(*args, beta=0.25)[0], 0.0)
    loss, chosen, rejected = ipo_loss(*args, beta=0.5)
    close(loss, 1.0)
    close(chosen, [0.5])
    close(rejected, [-0.5])
    # averaged per token: chosen 1 / 2 tokens, rejected -1 / 1 token: h = 1.5 = 1/(2 tau) for tau = 1/3
    close(ipo_loss(*args, beta=1 / 3, chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([1]))[0], 0.0)
    close(ipo_loss(*args, beta=1 / 3)[0], 0.25)  # summed: (2 - 1.5)^2
    # the sigmoid loss on the same pair: -log sigmoid(0.5 * 2)
    close(dpo_loss(*args, beta=0.5)[0], math.log1p(math.exp(-1.0)))
    # SimPO: 2 * -4/2 = -4, 2 * -9/3 = -6, margin -4 + 6 - 1 = 1: -log sigmoid(1); no reference read
    loss, chosen, rejected = simpo_loss(torch.tensor([-4.0]), torch.tensor([-9.0]), torch.tensor([2]),
                                        torch.tensor([3]), beta=2.0, gamma=1.0)
    close(loss, math.log1p(math.exp(-1.0)))
    close(chosen, [-4.0])
    close(rejected, [-6.0])


def test_adaptive_kl_controller_by_hand():
    ctl = KLController(0.1, "adaptive", target=6.0, horizon=100)
    # KL 9: error clip(9/6 - 1) = 0.2; 50 responses: x (1 + 0.2 * 0.5) = 1.1
    assert ctl.update(9.0, 50) == pytest.approx(0.11)
    # KL 5.4: error -0.1: x (1 - 0.05)
    assert ctl.update(5.4, 50) == pytest.approx(0.11 * 0.95)
    state = ctl.state_dict()
    restored = KLController(0.1, "adaptive", target=6.0, horizon=100)
    restored.load_state_dict(state)
    assert restored.value == ctl.value
    fixed = KLController(0.1)
    assert fixed.update(100.0, 1000) == 0.1
    with pytest.raises(ValueError, match="unknown KL controller"):
        KLController(0.1, "pid")
