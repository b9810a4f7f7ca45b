"""Implicit Language Q-Learning (Snell et al. 2022, arXiv:2206.11871): loss, target sync, steering.

Offline RL over tokens. State s_t is the prefix before action (token) t; its last hidden state
feeds Q heads that score every next token and a V head that scores the state. Training mixes
four terms (as trlX's ILQLConfig.loss): a TD loss for the Q heads, an expectile loss for V
(IQL, Kostrikov et al. 2021), a CQL-style cross-entropy on the Q heads, and an advantage-weighted
LM loss (AWAC, Nair et al. 2020). Generation samples from log π_β + β (Q − V).
"""

from __future__ import annotations

import torch
from torch import nn

from rlhflab.errors import RlhfLabError
from rlhflab.ops.masked import masked_sum
from rlhflab.ops.ppo import gae, logprobs_from_logits


def ilql_loss(qs: tuple[torch.Tensor, ...], target_qs: tuple[torch.Tensor, ...], vs: torch.Tensor,
              logits: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, *,
              gamma: float, tau: float, cql_scale: float, awac_scale: float, awac_beta: float,
              awac_max_weight: float = 100.0, q_target: str = "td") -> dict[str, torch.Tensor]:
    """ILQL losses, SUMMED over the real actions (the caller divides by the global count).

    qs / target_qs: Q heads / their Polyak targets, each (B, T, V), at the states s_t that
    choose action t; a target may also be (B, T), its value at action t already (training passes
    that: only the taken action's target is ever used, so the full readout is skipped); vs (B, T+1): V(s_t), vs[:, T] the state after the last column; logits
    (B, T, V) of the LM at the same states; actions (B, T) token ids (any value on padding);
    rewards (B, T); mask (B, T) 1 for real actions.

    Dones come from the mask: s_{t+1} is terminal unless action t+1 is real, so the last real
    action of a row bootstraps from nothing and vs[:, T] is never used.
    With y_t = r_t + γ V(s_{t+1}) [nonterminal] (q_target "td", ILQL's Bellman target) or
    y_t = Σ_{k≥t} γ^(k−t) r_k (q_target "monte_carlo": the discounted return that followed a_t in the
    data, so Q and V estimate the data's own policy, one-step offline RL as in Brandfonbrener et al.
    2021; a reward that only ends the text reaches every state at once instead of one state further
    per round of bootstrapping), and Q̂ = min_i targetQ_i(s_t, a_t), both detached:
      q    = Σ_i Σ_t (Q_i(s_t, a_t) − y_t)²                       (TD or Monte Carlo regression)
      v    = Σ_t |τ − 1(Q̂ < V(s_t))| (Q̂ − V(s_t))²               (expectile, IQL)
      cql  = Σ_i Σ_t −log softmax(Q_i(s_t, ·))[a_t]               (CQL as cross-entropy)
      awac = Σ_t −w_t log π(a_t | s_t), w_t = min(exp(awac_beta (Q̂ − V(s_t))), awac_max_weight)
    (w detached; awac_beta = 0 is the plain masked NLL, trlX's default).
    Returns {"loss": q + v + cql_scale·cql + awac_scale·awac, "q", "v", "cql", "awac"} (0-d fp32,
    each differentiable) and "count" (0-d int64, the number of real actions).
    Values on padding are ignored in the sums but must be finite for gradients (as model outputs are).
    Raises RlhfLabError for γ outside [0, 1], τ outside (0, 1), a negative scale or awac_beta,
    awac_max_weight <= 0, or another q_target.
    """
    if not 0.0 <= gamma <= 1.0:
        raise RlhfLabError(f"ILQL needs 0 <= gamma <= 1 (the discount), got {gamma}.")
    if not 0.0 < tau < 1.0:
        raise RlhfLabError(f"ILQL needs 0 < tau < 1 (the expectile; 0.7 is usual), got {tau}.")
    for name, value in (("cql_scale", cql_scale), ("awac_scale", awac_scale), ("awac_beta", awac_beta)):
        if value < 0:
            raise RlhfLabError(f"ILQL needs {name} >= 0, got {value}.")
    if q_target not in ("td", "monte_carlo"):
        raise RlhfLabError(f"ILQL's q_target is 'td' or 'monte_carlo', got {q_target!r}.")
    if not awac_max_weight > 0:
        raise RlhfLabError(f"ILQL needs awac_max_weight > 0, got {awac_max_weight}.")
    if not qs or not target_qs:
        raise ValueError("ilql_loss needs at least one Q head and one target Q head")
    keep = mask.bool()  # (B, T)
    if vs.shape != (keep.shape[0], keep.shape[1] + 1):
        raise ValueError(f"vs must be (B, T+1) = {(keep.shape[0], keep.shape[1] + 1)}, got {tuple(vs.shape)}")
    zero = torch.zeros((), dtype=torch.float32, device=keep.device)
    # where, not multiply: padding may hold -100 ids or non-finite rewards/values
    actions = torch.where(keep, actions.long(), torch.zeros((), dtype=torch.long, device=keep.device))
    v_now = torch.where(keep, vs[:, :-1].float(), zero)  # V(s_t)
    rewards = torch.where(keep, rewards.float(), zero)
    if q_target == "td":
        nonterminal = torch.cat([keep[:, 1:], torch.zeros_like(keep[:, :1])], dim=1)  # (B, T): is action t+1 real
        v_next = torch.where(nonterminal, vs[:, 1:].float(), zero)  # V(s_{t+1}), 0 after the last real action
        target = (rewards + gamma * v_next).detach()  # y_t
    else:  # GAE with zero values and λ 1 is the discounted return-to-go
        _, target = gae(rewards, torch.zeros_like(rewards), keep, gamma, 1.0)

    def taken(q: torch.Tensor) -> torch.Tensor:
        """Q(s_t, a_t) (B, T) fp32; gather before the cast so (B, T, V) is never copied."""
        at_action = q if q.dim() == keep.dim() else q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return torch.where(keep, at_action.float(), zero)

    q_hat = torch.stack([taken(q) for q in target_qs]).amin(0).detach()  # min over heads: less overestimation
    q_loss = sum(masked_sum((taken(q) - target) ** 2, keep) for q in qs)
    expectile = torch.abs(tau - (q_hat < v_now).float())  # τ above V, 1 − τ below: τ > 0.5 leans to the max
    v_loss = masked_sum(expectile * (q_hat - v_now) ** 2, keep)
    cql = sum(masked_sum(-logprobs_from_logits(q, actions), keep) for q in qs)
    with torch.no_grad():
        awac_weight = torch.exp(awac_beta * (q_hat - v_now)).clamp(max=awac_max_weight)  # clamp: exp overflows
    awac = masked_sum(-awac_weight * logprobs_from_logits(logits, actions), keep)
    loss = q_loss + v_loss + cql_scale * cql + awac_scale * awac
    return {"loss": loss, "q": q_loss, "v": v_loss, "cql": cql, "awac": awac, "count": keep.sum()}


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, alpha: float) -> None:
    """target ← alpha·online + (1 − alpha)·target for every parameter, in place (alpha = 1 copies).

    Raises RlhfLabError for alpha outside (0, 1]; ValueError when the modules do not match."""
    if not 0.0 < alpha <= 1.0:
        raise RlhfLabError(f"The target-network update needs 0 < alpha <= 1, got {alpha}.")
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        if t.shape != o.shape:
            raise ValueError(f"target and online parameters differ in shape: {tuple(t.shape)} vs {tuple(o.shape)}")
        t.lerp_(o.to(t.dtype), alpha)  # t + alpha (o − t); exactly o at alpha = 1


def steered_logits(logits: torch.Tensor, q: torch.Tensor, v: torch.Tensor, beta: float, top_k: int = 0) -> torch.Tensor:
    """log π_β(a|s) + β (Q(s, a) − V(s)), fp32: the ILQL policy π ∝ π_β exp(β (Q − V)) as logits
    (Snell et al. 2022, policy extraction). logits, q (..., V); v (...). β = 0 gives the base
    model's log-probs. top_k > 0 keeps the k highest steered logits of each state and sets the rest
    to −inf (trlX's ILQL sampling, top_k 20): the heads' advantage then reorders likely tokens
    instead of lifting rare ones it never saw in the data. Raises RlhfLabError for β < 0 or top_k < 0."""
    if not 0 <= beta < float("inf"):
        raise RlhfLabError(f"The ILQL steering strength beta must be a finite number >= 0, got {beta}.")
    if top_k < 0:
        raise RlhfLabError(f"The ILQL top_k must be >= 0 (0: the whole vocabulary), got {top_k}.")
    steered = torch.log_softmax(logits.float(), dim=-1)
    if beta != 0:  # at 0: exactly the base distribution, whatever the heads hold
        steered = steered + beta * (q.float() - v.float().unsqueeze(-1))
    if 0 < top_k < steered.shape[-1]:
        kth = steered.topk(top_k, dim=-1).values[..., -1:]
        steered = steered.masked_fill(steered < kth, float("-inf"))
    return steered
