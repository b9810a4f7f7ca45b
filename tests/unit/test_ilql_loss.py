"""ILQL loss terms against hand-computed values; terminal states and padding; which term trains
what; Polyak target updates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rlhflab.errors import RlhfLabError
from rlhflab.ops.ilql import ilql_loss, polyak_update

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = dict(gamma=0.5, tau=0.7, cql_scale=0.1, awac_scale=2.0, awac_beta=1.0)


def t(values):
    return torch.tensor(values, dtype=torch.float32)


def hand_example():
    """One row, two actions (a_0 = 0, a_1 = 2), vocab 3; reward 1 on the last action."""
    qs = (t([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]), t([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))  # Q1(a) = 1, 2; Q2(a) = 0, 1
    # the untaken entries are far off: only the taken action's Q may count
    target_qs = (t([[0.3, 5.0, 5.0], [5.0, 5.0, 1.5]]), t([[0.4, -5.0, -5.0], [-5.0, -5.0, 0.6]]))  # Q̂ = 0.3, 0.6
    vs = t([0.5, 0.2, 9.0])  # V(s_0), V(s_1), V(s_2); s_2 is terminal, 9 must never count
    logits = t([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)]])  # π(a_0) = 1/3, π(a_1) = 2/4
    actions, rewards, mask = torch.tensor([[0, 2]]), t([0.0, 1.0]), t([1.0, 1.0])
    return tuple(q[None] for q in qs), tuple(q[None] for q in target_qs), vs[None], logits[None], actions, rewards[None], mask[None]


def test_terms_by_hand():
    out = ilql_loss(*hand_example(), **SETTINGS)
    # y_0 = 0 + 0.5 * V(s_1) = 0.1; y_1 = 1 + 0 (s_2 terminal) = 1
    q = (1 - 0.1) ** 2 + (2 - 1) ** 2 + (0 - 0.1) ** 2 + (1 - 1) ** 2  # = 1.82
    # Q̂ = 0.3 < V = 0.5: weight 1 - τ; Q̂ = 0.6 >= V = 0.2: weight τ
    v = 0.3 * (0.3 - 0.5) ** 2 + 0.7 * (0.6 - 0.2) ** 2  # = 0.124
    # cross-entropy of each Q row against the action: log Σ exp(row) − row[a]
    cql = (math.log(math.e + 2) - 1) + (math.log(2 + math.e**2) - 2) + math.log(3) + (math.log(2 + math.e) - 1)
    awac = math.exp(0.3 - 0.5) * math.log(3) + math.exp(0.6 - 0.2) * math.log(2)  # w = exp(Q̂ − V)
    assert out["q"].item() == pytest.approx(q, abs=1e-6)
    assert out["v"].item() == pytest.approx(v, abs=1e-6)
    assert out["cql"].item() == pytest.approx(cql, abs=1e-5)
    assert out["awac"].item() == pytest.approx(awac, abs=1e-5)
    assert out["loss"].item() == pytest.approx(q + v + 0.1 * cql + 2.0 * awac, abs=1e-5)
    assert int(out["count"]) == 2


def test_monte_carlo_targets_are_the_discounted_return_that_followed():
    qs, target_qs, vs, logits, actions, rewards, mask = hand_example()
    rewards = t([[0.4, 1.0]])
    out = ilql_loss(qs, target_qs, vs, logits, actions, rewards, mask, **SETTINGS, q_target="monte_carlo")
    # y_0 = 0.4 + 0.5 * 1 = 0.9, y_1 = 1: the rewards that followed, whatever V holds
    q = (1 - 0.9) ** 2 + (2 - 1) ** 2 + (0 - 0.9) ** 2 + (1 - 1) ** 2
    assert out["q"].item() == pytest.approx(q, abs=1e-6)
    td = ilql_loss(qs, target_qs, vs, logits, actions, rewards, mask, **SETTINGS)  # y_0 = 0.4 + 0.5 V(s_1) = 0.5
    assert td["q"].item() == pytest.approx((1 - 0.5) ** 2 + 1 + 0.5 ** 2, abs=1e-6)
    # V, CQL and AWAC do not depend on the Q target
    assert all(out[k].item() == pytest.approx(td[k].item(), abs=1e-6) for k in ("v", "cql", "awac"))
    # padding between and after the real actions is skipped by the return, and V never enters it
    padded = ilql_loss(tuple(torch.stack([q[:, 0], q[:, 0], q[:, 1], q[:, 1]], 1) for q in qs),
                       tuple(torch.stack([q[:, 0], q[:, 0], q[:, 1], q[:, 1]], 1) for q in target_qs),
                       t([[0.5, 7.0, 0.2, -3.0, 9.0]]), torch.stack([logits[:, 0], logits[:, 0], logits[:, 1], logits[:, 1]], 1),
                       torch.tensor([[0, 1, 2, 0]]), t([[0.4, 99.0, 1.0, 99.0]]), t([[1.0, 0.0, 1.0, 0.0]]),
                       **SETTINGS, q_target="monte_carlo")
    assert padded["q"].item() == pytest.approx(q, abs=1e-6)


def test_awac_weight_is_clamped():
    out = ilql_loss(*hand_example(), **{**SETTINGS, "awac_max_weight": 1.2})
    # exp(0.4) = 1.49 > 1.2 is clamped, exp(-0.2) = 0.82 is not
    assert out["awac"].item() == pytest.approx(math.exp(-0.2) * math.log(3) + 1.2 * math.log(2), abs=1e-5)


def test_no_bootstrap_from_the_state_after_the_last_real_action():
    qs, target_qs, vs, logits, actions, rewards, mask = hand_example()
    pad = lambda x, value: torch.cat([x, torch.full_like(x[:, :1], value)], dim=1)  # noqa: E731
    padded = (tuple(pad(q, 0.0) for q in qs), tuple(pad(q, 0.0) for q in target_qs), pad(vs, 0.0),
              pad(logits, 0.0), pad(actions, 0), pad(rewards, 0.0), pad(mask, 0.0))
    base = ilql_loss(*padded, **SETTINGS)
    for value in (-100.0, 100.0):
        changed = padded[2].clone()
        changed[0, 2] = value  # V of the state after the last real action (and before a padding action)
        out = ilql_loss(*padded[:2], changed, *padded[3:], **SETTINGS)
        assert all(out[k].item() == pytest.approx(base[k].item(), abs=1e-6) for k in ("loss", "q", "v", "cql", "awac"))


def test_padding_adds_nothing():
    torch.manual_seed(0)
    B, T, V = 2, 3, 5
    qs = tuple(torch.randn(B, T, V) for _ in range(2))
    target_qs = tuple(torch.randn(B, T, V) for _ in range(2))
    vs, logits = torch.randn(B, T + 1), torch.randn(B, T, V)
    actions, rewards = torch.randint(0, V, (B, T)), torch.randn(B, T)
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 1 is already padded once
    out = ilql_loss(qs, target_qs, vs, logits, actions, rewards, mask, **SETTINGS)

    wide = lambda x, fill: torch.cat([x, torch.full((B, 2, *x.shape[2:]), fill)], dim=1)  # noqa: E731
    # garbage on padding: huge Q/logits, NaN values and rewards, -100 action ids
    out_wide = ilql_loss(tuple(wide(q, 1e4) for q in qs), tuple(wide(q, -1e4) for q in target_qs),
                         wide(vs, float("nan")), wide(logits, 1e4), wide(actions, -100),
                         wide(rewards, float("nan")), wide(mask, 0.0), **SETTINGS)
    for key in ("loss", "q", "v", "cql", "awac"):
        assert out_wide[key].item() == pytest.approx(out[key].item(), rel=1e-6, abs=1e-6), key
    assert int(out["count"]) == int(out_wide["count"]) == 5


def test_expectile_weights_are_asymmetric():
    # a single terminal action over vocab 1: Q̂ = the target Q, V = vs[:, 0]
    def v_loss(q_hat, v, tau):
        q = t([[[q_hat]]])
        return ilql_loss((q,), (q,), t([[v, 0.0]]), t([[[0.0]]]), torch.tensor([[0]]), t([[0.0]]), t([[1.0]]),
                         gamma=1.0, tau=tau, cql_scale=0.0, awac_scale=0.0, awac_beta=0.0)["v"].item()

    assert v_loss(1.0, 0.0, 0.9) == pytest.approx(0.9)  # Q̂ above V: τ · 1²
    assert v_loss(0.0, 1.0, 0.9) == pytest.approx(0.1)  # Q̂ below V: (1 − τ) · 1²
    assert v_loss(2.0, 0.0, 0.5) == v_loss(0.0, 2.0, 0.5) == pytest.approx(2.0)  # τ = 0.5: half the squared error


def test_awac_beta_zero_is_the_plain_masked_nll():
    torch.manual_seed(1)
    B, T, V = 2, 4, 6
    logits, actions = torch.randn(B, T, V), torch.randint(0, V, (B, T))
    mask = t([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    qs = tuple(torch.randn(B, T, V) * 3 for _ in range(2))  # Q̂ − V far from 0: must not matter
    out = ilql_loss(qs, qs, torch.randn(B, T + 1), logits, actions, torch.zeros(B, T), mask,
                    **{**SETTINGS, "awac_beta": 0.0})
    nll = -(torch.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1) * mask).sum()
    assert out["awac"].item() == pytest.approx(nll.item(), abs=1e-5)


def test_each_term_trains_only_its_own_inputs():
    torch.manual_seed(2)
    B, T, V = 2, 3, 4
    q1, q2 = (torch.randn(B, T, V, requires_grad=True) for _ in range(2))
    vs, logits = torch.randn(B, T + 1, requires_grad=True), torch.randn(B, T, V, requires_grad=True)
    # targets computed from the online heads: the V loss still must not reach them
    target_qs = (q1 * 1.0, q2 * 1.0)
    out = ilql_loss((q1, q2), target_qs, vs, logits, torch.randint(0, V, (B, T)), torch.randn(B, T),
                    torch.ones(B, T), **SETTINGS)

    def grads(term):
        found = torch.autograd.grad(out[term], [q1, vs, logits], retain_graph=True, allow_unused=True)
        return [g is not None and bool(g.abs().sum() > 0) for g in found]  # [Q, V, LM] get a gradient?

    assert grads("q") == [True, False, False]  # the TD target is detached
    assert grads("v") == [False, True, False]  # Q̂ is detached
    assert grads("cql") == [True, False, False]
    assert grads("awac") == [False, False, True]  # the weights are detached


def test_bad_settings_are_clear_errors():
    args = hand_example()
    for bad, match in (({"gamma": 1.5}, "gamma"), ({"gamma": -0.1}, "gamma"), ({"tau": 0.0}, "tau"),
                       ({"tau": 1.0}, "tau"), ({"cql_scale": -1.0}, "cql_scale"), ({"awac_scale": -1.0}, "awac_scale"),
                       ({"awac_beta": -1.0}, "awac_beta"), ({"awac_max_weight": 0.0}, "awac_max_weight"),
                       ({"q_target": "lambda"}, "q_target")):
        with pytest.raises(RlhfLabError, match=match):
            ilql_loss(*args, **{**SETTINGS, **bad})


def test_polyak_update_copies_at_one_and_averages_at_a_half():
    def linear(weight, bias):
        layer = nn.Linear(2, 1)
        with torch.no_grad():
            layer.weight.copy_(t([weight]))
            layer.bias.copy_(t([bias]))
        return layer

    target, online = linear([1.0, 1.0], 0.0), linear([3.0, 5.0], 2.0)
    polyak_update(target, online, 0.5)
    assert target.weight.tolist() == [[2.0, 3.0]] and target.bias.tolist() == [1.0]
    assert online.weight.tolist() == [[3.0, 5.0]]  # the online module is untouched
    polyak_update(target, online, 1.0)
    assert torch.equal(target.weight, online.weight) and torch.equal(target.bias, online.bias)
    for alpha in (0.0, 1.5):
        with pytest.raises(RlhfLabError, match="alpha"):
            polyak_update(target, online, alpha)


def test_targets_given_at_the_taken_actions_give_the_same_loss():
    qs, target_qs, vs, logits, actions, rewards, mask = hand_example()
    taken = tuple(q.gather(-1, actions[..., None]).squeeze(-1) for q in target_qs)  # (B, T) each
    full, given = ilql_loss(*hand_example(), **SETTINGS), ilql_loss(qs, taken, vs, logits, actions, rewards, mask, **SETTINGS)
    assert all(torch.equal(full[k], given[k]) for k in ("loss", "q", "v", "cql", "awac", "count"))
