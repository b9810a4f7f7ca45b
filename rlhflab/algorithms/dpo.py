"""Direct preference optimisation as a supervised objective (rlhflab/algorithms/supervised.py).

Pairs become token rows once (`token_pairs`, or `on_policy_pairs` from the policy's own samples
ranked by a reward function), the frozen reference's sequence log-probs are computed once per
pair before training (`DpoObjective`), and every step only runs the policy:

    loss = preference_loss(log π(y_w), log π(y_l), log π_ref(y_w), log π_ref(y_l), β)   (ops/preference.py)
           [+ nll_coef * -log π(y_w) / |y_w|: RPO, the chosen responses' likelihood kept up]

The reference is the starting model itself, scored before its first update, so no second copy
of the model is held while training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rlhflab.algorithms.supervised import evaluation_chunks
from rlhflab.data.records import join_prompt_response
from rlhflab.engine.sharding import gathered
from rlhflab.errors import RlhfLabError
from rlhflab.models.encoding import EncodedSplit
from rlhflab.ops.preference import preference_loss, sequence_logprobs


@dataclass(frozen=True)
class TokenPair:
    """A preference pair as the policy's tokens: `prompt_ids` then a response's ids."""

    prompt: str
    chosen: str
    rejected: str
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    chosen_score: float | None = None  # the reward function's scores, for on-policy pairs
    rejected_score: float | None = None


PAIRINGS = ("best_worst", "all")


def ranked_pairs(scores: torch.Tensor, pairing: str = "best_worst") -> list[list[tuple[int, int]]]:
    """scores (P, k) of k responses to each of P prompts -> for each prompt, its (chosen, rejected)
    indices: best_worst, the highest against the lowest score (ties between the best go to the first
    sampled); all, every two responses whose scores differ, the higher chosen (k(k-1)/2 pairs at most,
    in sampling order). A prompt whose responses all score the same gives none. Raises RlhfLabError
    for an unknown pairing."""
    if pairing not in PAIRINGS:
        raise RlhfLabError(f"Unknown pairing {pairing!r}; use one of {', '.join(PAIRINGS)}.")
    out = []
    for row in scores.tolist():
        if pairing == "best_worst":
            best, worst = max(range(len(row)), key=row.__getitem__), min(range(len(row)), key=row.__getitem__)
            out.append([(best, worst)] if row[best] > row[worst] else [])
        else:
            out.append([(i, j) if row[i] > row[j] else (j, i) for i in range(len(row)) for j in range(i + 1, len(row))
                        if row[i] != row[j]])
    return out


@torch.no_grad()
def on_policy_pairs(model, tokenizer, prompts: Sequence[str], reward: Callable, *, k: int, max_new_tokens: int,
                    temperature: float, seed: int, batch_size: int, runtime,
                    pairing: str = "best_worst") -> tuple[list[TokenPair], int]:
    """Sample k responses per prompt from `model`, score them with `reward` (prompts, responses) ->
    (N,), and pair them as `pairing` says (ranked_pairs; AI feedback: the reward function plays the
    labeller). Returns (pairs in prompt order, prompts left out because all k responses scored the same).
    Each process samples its share of the prompts; every process gets all pairs."""
    from rlhflab.eval.generate import sample_and_score

    _, generations, scores = sample_and_score(model, tokenizer, prompts, reward, k=k, max_new_tokens=max_new_tokens,
                                                 temperature=temperature, seed=seed, batch_size=batch_size,
                                                 runtime=runtime)
    per_prompt: list[list[TokenPair] | None] = []
    for i, indices in enumerate(ranked_pairs(scores, pairing)):
        pairs = []
        for chosen, rejected in indices:
            best, worst = generations[i * k + chosen], generations[i * k + rejected]
            pairs.append(TokenPair(best.prompt, best.response, worst.response, tuple(best.prompt_ids),
                                   tuple(best.response_ids), tuple(worst.response_ids),
                                   float(scores[i, chosen]), float(scores[i, rejected])))
        per_prompt.append(pairs or None)
    per_prompt = runtime.gather_round_robin(per_prompt)
    return [pair for pairs in per_prompt if pairs for pair in pairs], sum(p is None for p in per_prompt)


def token_pairs(pairs, tokenizer) -> list[TokenPair]:
    """Tokenize (prompt, chosen, rejected) pairs the way the policy reads them: the prompt with
    its special tokens, then each response as it continues the prompt's text, ended by EOS."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for pair in pairs:
        prompt_ids = tokenizer(pair.prompt)["input_ids"] if pair.prompt else []

        def response(text: str) -> tuple[int, ...]:
            continuation = join_prompt_response(pair.prompt, text)[len(pair.prompt):]
            return tuple(tokenizer(continuation, add_special_tokens=False)["input_ids"] + eos)

        out.append(TokenPair(pair.prompt, pair.chosen, pair.rejected, tuple(prompt_ids), response(pair.chosen),
                             response(pair.rejected)))
    return out


def encode_pairs(pairs: Sequence[TokenPair], tokenizer, max_length: int) -> tuple[EncodedSplit, torch.Tensor, int]:
    """Right-padded rows (2N, T): the N chosen sequences, then the N rejected ones, and the
    response mask (2N, T) marking response tokens; also how many responses were cut to fit.

    A row is at most max_length tokens: the prompt gives way from its front; a response longer
    than max_length − 1 keeps its beginning. A pair without prompt tokens starts from EOS (BOS
    in GPT-2's convention) so that its first response token has something to be predicted from."""
    start = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    rows, prompt_lengths, cut = [], [], 0
    for side in ("chosen_ids", "rejected_ids"):
        for pair in pairs:
            prompt, response = list(pair.prompt_ids) or start, list(getattr(pair, side))
            if len(response) > max_length - 1:
                response, cut = response[: max_length - 1], cut + 1
            prompt = prompt[-(max_length - len(response)):]
            rows.append(prompt + response)
            prompt_lengths.append(len(prompt))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    response_mask = torch.zeros_like(ids)
    for i, (row, p) in enumerate(zip(rows, prompt_lengths)):
        ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        response_mask[i, p : len(row)] = 1
    return EncodedSplit(ids, attention), response_mask, cut


class DpoObjective:
    """The DPO loss and validation metrics over encoded pair splits.

    `forward(split, rows)` -> logits (rows, T, V) runs the policy (make_forward of rlhflab/models/
    encoding.py). `data[name]` holds 2N rows (chosen then rejected) and `masks[name]` their
    response masks; `reward_gaps[name]` (N,), for the distill loss, each pair's r(chosen) - r(rejected).
    The reference log-probs are the policy's own, computed here, before training."""

    def __init__(self, forward: Callable, data: dict[str, EncodedSplit], masks: dict[str, torch.Tensor], *, beta: float,
                 loss: str, batch_size: int, model, runtime, nll_coef: float = 0.0,
                 reward_gaps: dict[str, torch.Tensor] | None = None):
        self.forward, self.data, self.masks, self.reward_gaps = forward, data, masks, reward_gaps
        self.beta, self.loss_type, self.batch_size, self.model, self.runtime = beta, loss, batch_size, model, runtime
        self.nll_coef = nll_coef
        self.reference = {name: self.logprobs(name, torch.arange(len(split), device=split.input_ids.device), grad=False)
                          for name, split in data.items()}

    def pairs(self, name: str) -> int:
        return len(self.data[name]) // 2

    def logprobs(self, name: str, rows: torch.Tensor, *, grad: bool = True) -> torch.Tensor:
        """Sequence log-probs (len(rows),) of rows of split `name`, in batches when no gradient is needed."""
        split, mask = self.data[name], self.masks[name]
        if grad:
            logits = self.forward(split, rows)
            return sequence_logprobs(logits[:, :-1], split.input_ids[rows, 1:], mask[rows, 1:])
        self.model.eval()
        with torch.no_grad():
            return torch.cat([self.logprobs(name, chunk) for chunk in rows.split(self.batch_size)])

    def _loss(self, name: str, pairs: torch.Tensor, grad: bool, start: bool = False) -> dict[str, torch.Tensor]:
        n = self.pairs(name)
        rows = torch.cat([pairs, pairs + n])
        reference = self.reference[name][rows]
        policy = reference if start else self.logprobs(name, rows, grad=grad)  # at the start the policy is the reference
        b = len(pairs)
        chosen_tokens = self.masks[name][pairs, 1:].sum(-1)  # the tokens sequence_logprobs summed over
        gap = self.reward_gaps[name][pairs] if self.reward_gaps is not None else None
        return preference_loss(policy[:b], policy[b:], reference[:b], reference[b:], self.beta, self.loss_type,
                               self.nll_coef, chosen_tokens, gap)

    def train_loss(self, pairs: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(loss summed over the pairs, pair count): the Supervised algorithm's contract."""
        return self._loss("train", pairs, grad=True)["loss"] * len(pairs), len(pairs)

    @torch.no_grad()
    def metrics(self, name: str, *, start: bool = False) -> dict[str, float]:
        """Loss, pair accuracy (implicit reward of the chosen above the rejected), mean implicit
        rewards β·(log π − log π_ref) of each side and their margin, over this process's share of
        the split, summed over processes before dividing. `start`: before the first update, from
        the reference log-probs alone (no forward pass)."""
        device = self.data[name].input_ids.device
        pairs = torch.arange(self.pairs(name), device=device)[self.runtime.rank :: self.runtime.world_size]
        totals = torch.zeros(6, dtype=torch.float64)
        chunks, counted = evaluation_chunks(pairs, max(self.batch_size // 2, 1))
        # under FSDP whole weights: the processes' shares may take different numbers of forward passes,
        # and a sharded forward is a collective
        with gathered(self.model):
            for chunk in chunks:
                out = self._loss(name, chunk, grad=False, start=start)
                totals += counted * torch.tensor([float(out["loss"]) * len(chunk), float((out["margin"] > 0).sum()),
                                                   float(out["chosen_reward"].sum()), float(out["rejected_reward"].sum()),
                                                   float(out["margin"].sum()), len(chunk)], dtype=torch.float64)
        totals = self.runtime.sum(totals.to(device)).cpu()
        count = max(float(totals[5]), 1.0)
        keys = ("loss", "pair_accuracy", "chosen_reward", "rejected_reward", "margin")
        return {**{key: float(totals[i]) / count for i, key in enumerate(keys)}, "pairs": int(totals[5])}
