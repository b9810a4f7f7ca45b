"""Direct preference optimisation losses (pure tensor functions, no model).

Inputs are sequence log-probabilities of a response given its prompt, summed over the
response's tokens (`sequence_logprobs`), for the policy and the frozen reference, each (B,):
the chosen (preferred) and the rejected response of B pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhflab.errors import RlhfLabError
from rlhflab.ops.ppo import logprobs_from_logits

LOSSES = ("sigmoid", "ipo", "distill")


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label) over the positions where `mask` is 1: logits (B, T, V) predicting
    labels (B, T), mask (B, T) of the response tokens -> (B,) in nats, fp32.

    Padding (mask 0) adds nothing, so a row's value does not depend on how far it was padded."""
    return (logprobs_from_logits(logits, labels) * mask.float()).sum(-1)


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, beta: float, loss: str = "sigmoid", nll_coef: float = 0.0,
                    chosen_tokens: torch.Tensor | None = None,
                    reward_gap: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """DPO (Rafailov et al. 2023, eq. 7), IPO (Azar et al. 2023, eq. 17) or distilled DPO (Fisch et
    al. 2024, "Robust Preference Optimization through Reward Model Distillation", eq. 7), averaged
    over pairs, plus nll_coef x the chosen responses' negative log-likelihood per token (RPO: Pang et
    al. 2024, "Iterative Reasoning Preference Optimization", eq. 1; chosen_tokens (B,) counts their tokens).

    h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l)), all (B,) in nats;
    sigmoid: -log σ(β h); ipo: (h - 1/(2β))²; distill: (β h - (r(y_w) - r(y_l)))², with reward_gap
    (B,) the reward function's r(y_w) - r(y_l): its minimiser is π_ref·exp(r/β), the optimum of
    KL-regularised RL with β as the KL coefficient, where the other two push h without bound on
    pairs that one label ranks; nll: -log π(y_w) / |y_w|. Returns {"loss": scalar,
    "chosen_reward": β(log π(y_w) - log π_ref(y_w)), "rejected_reward": the same for y_l (both (B,),
    detached, the implicit rewards), "margin": their difference}. Raises RlhfLabError for β <= 0,
    an unknown loss, distill without reward_gap, a negative nll_coef or one without chosen_tokens."""
    if not 0 < beta < float("inf"):
        raise RlhfLabError(f"The preference loss needs a finite beta > 0, got {beta}.")
    if loss not in LOSSES:
        raise RlhfLabError(f"Unknown preference loss {loss!r}; use one of {', '.join(LOSSES)}.")
    if loss == "distill" and reward_gap is None:
        raise RlhfLabError("The distill loss needs each pair's reward gap r(chosen) - r(rejected): pairs scored by a "
                           "reward function (on-policy pairs).")
    if not 0 <= nll_coef < float("inf") or (nll_coef and chosen_tokens is None):
        raise RlhfLabError(f"The NLL term needs a finite nll_coef >= 0 (got {nll_coef}) and the chosen responses' "
                           f"token counts.")
    chosen = policy_chosen.float() - ref_chosen.float()
    rejected = policy_rejected.float() - ref_rejected.float()
    h = chosen - rejected
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = (beta * h - reward_gap.float()) ** 2
    if nll_coef:
        losses = losses - nll_coef * policy_chosen.float() / chosen_tokens.float().clamp(min=1)
    chosen_reward, rejected_reward = (beta * chosen).detach(), (beta * rejected).detach()
    return {"loss": losses.mean(), "chosen_reward": chosen_reward, "rejected_reward": rejected_reward,
            "margin": chosen_reward - rejected_reward}
