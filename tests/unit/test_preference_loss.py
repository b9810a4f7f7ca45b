"""DPO, IPO and distilled DPO losses against hand-computed values; sequence log-probs ignore padding."""

from __future__ import annotations

import math

import pytest
import torch

from rlhflab.errors import RlhfLabError
from rlhflab.ops.preference import preference_loss, sequence_logprobs


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_dpo_by_hand():
    # h = (-1 - -2) - (-3 - -2) = 2; beta 0.5: -log sigma(1) = log(1 + e^-1)
    out = preference_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5)
    assert out["loss"].item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert out["chosen_reward"].tolist() == [0.5] and out["rejected_reward"].tolist() == [-0.5]
    assert out["margin"].tolist() == [1.0]


def test_at_the_reference_dpo_is_log_2_and_ipo_is_one_over_four_beta_squared():
    zero = t(-5.0, -7.0)
    assert preference_loss(zero, zero - 1, zero, zero - 1, beta=0.1)["loss"].item() == pytest.approx(math.log(2))
    # IPO: (0 - 1/(2 * 0.5))^2 = 1
    assert preference_loss(zero, zero, zero, zero, beta=0.5, loss="ipo")["loss"].item() == pytest.approx(1.0)


def test_ipo_by_hand_and_its_minimum():
    # h = 2, beta 0.5: (2 - 1)^2 = 1; h = 1 = 1/(2 beta): 0
    assert preference_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, loss="ipo")["loss"].item() == pytest.approx(1.0)
    assert preference_loss(t(-1.5), t(-2.5), t(-2.0), t(-2.0), beta=0.5, loss="ipo")["loss"].item() == pytest.approx(0.0)


def test_distill_by_hand_and_its_minimum():
    # h = 2, beta 0.5: beta h = 1; reward gap 0.3: (1 - 0.3)^2 = 0.49; a gap of 1: 0
    out = preference_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, loss="distill", reward_gap=t(0.3))
    assert out["loss"].item() == pytest.approx(0.49)
    assert preference_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, loss="distill",
                           reward_gap=t(1.0))["loss"].item() == pytest.approx(0.0)


def test_distill_over_all_pairs_learns_the_kl_regularised_optimum():
    # a policy over 5 responses, trained on every pair of them, ends at π_ref exp(r / β) / Z: the
    # optimum of KL-regularised RL with β as its coefficient (Rafailov et al. 2023, eq. 4)
    torch.manual_seed(0)
    ref, reward, beta = torch.log_softmax(torch.randn(5), 0), torch.rand(5), 0.25
    logits = ref.clone().requires_grad_()
    i, j = torch.triu_indices(5, 5, offset=1)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    for _ in range(1500):
        policy = torch.log_softmax(logits, 0)
        loss = preference_loss(policy[i], policy[j], ref[i], ref[j], beta, "distill", reward_gap=reward[i] - reward[j])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    expected = torch.softmax(ref + reward / beta, 0)
    assert torch.softmax(logits.detach(), 0).tolist() == pytest.approx(expected.tolist(), abs=1e-4)


def test_the_gradient_raises_the_chosen_and_lowers_the_rejected():
    chosen, rejected = t(-2.0).requires_grad_(), t(-2.0).requires_grad_()
    preference_loss(chosen, rejected, t(-2.0), t(-2.0), beta=0.1)["loss"].backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()  # gradient descent moves them apart


def test_rpo_adds_the_chosen_responses_nll_per_token():
    # DPO by hand as above: log(1 + e^-1); chosen log-prob -1 over 4 tokens: NLL 0.25 a token; coef 2: + 0.5
    out = preference_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, nll_coef=2.0, chosen_tokens=t(4.0))
    assert out["loss"].item() == pytest.approx(math.log(1 + math.exp(-1)) + 0.5)
    # its gradient raises the chosen response more than DPO's alone, and leaves the rejected's alone
    grads = []
    for coef in (0.0, 1.0):
        chosen, rejected = t(-2.0).requires_grad_(), t(-2.0).requires_grad_()
        preference_loss(chosen, rejected, t(-2.0), t(-2.0), beta=0.1, nll_coef=coef, chosen_tokens=t(2.0))["loss"].backward()
        grads.append((chosen.grad.item(), rejected.grad.item()))
    assert grads[1][0] == pytest.approx(grads[0][0] - 0.5) and grads[1][1] == pytest.approx(grads[0][1])


def test_bad_settings_are_clear_errors():
    with pytest.raises(RlhfLabError, match="beta > 0"):
        preference_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=0.0)
    with pytest.raises(RlhfLabError, match="Unknown preference loss"):
        preference_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=0.1, loss="hinge")
    with pytest.raises(RlhfLabError, match="reward gap"):
        preference_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=0.1, loss="distill")
    with pytest.raises(RlhfLabError, match="token counts"):
        preference_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=0.1, nll_coef=1.0)
    with pytest.raises(RlhfLabError, match="nll_coef >= 0"):
        preference_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=0.1, nll_coef=-1.0, chosen_tokens=t(1.0))


def test_sequence_logprobs_ignore_padding():
    torch.manual_seed(0)
    logits, labels = torch.randn(1, 3, 7), torch.tensor([[1, 4, 2]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])  # the prompt's position is not the response
    padded_logits = torch.cat([logits, torch.randn(1, 2, 7)], dim=1)
    padded = sequence_logprobs(padded_logits, torch.tensor([[1, 4, 2, 0, 0]]), torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0]]))
    expected = torch.log_softmax(logits, -1)[0, 1, 4] + torch.log_softmax(logits, -1)[0, 2, 2]
    assert sequence_logprobs(logits, labels, mask).item() == pytest.approx(expected.item(), abs=1e-6)
    assert padded.item() == pytest.approx(expected.item(), abs=1e-6)
