"""`rlhflab generate`: what models say to the same prompts, side by side, with their rewards.

    result = side_by_side(["runs/default/sft", "runs/default/rl"], ["I went to see this film"],
                          n=4, reward=build_reward(RewardFnConfig(source="runs/default/reward")))
    print(format_text(result))            # or to_json(result)

Each model answers every prompt n times (n·N times with best_of=N, keeping the best of each N,
the classic best-of-n baseline). A model's samples are drawn in one `generate` call, seeded per
batch, so they do not depend on which other models run. Models load one at a time.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import textwrap
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rlhflab.errors import RlhfLabError

NO_GROUP = "(no group)"  # how prompts without a group are shown beside grouped ones


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n policy || base policy) in nats: log n − (n − 1)/n.

    The analytic bound for picking the highest-reward of n independent samples (Stiennon et al.
    2020, appendix; Hilton & Gao, "Measuring Goodhart's law"), exact when no two samples tie.
    Raises RlhfLabError for n < 1."""
    if not isinstance(n, int) or n < 1:
        raise RlhfLabError(f"best-of-n needs n >= 1, got {n!r}.")
    return math.log(n) - (n - 1) / n


def select_best(rewards: Sequence[float], group_size: int) -> list[int]:
    """Index of the highest reward in each consecutive group of `group_size` (the first on ties).

    rewards: (G * group_size,) flat scores; returns G indices into it. RlhfLabError when the
    length is not a multiple of group_size."""
    rewards = list(rewards)
    if group_size < 1 or len(rewards) % group_size:
        raise RlhfLabError(f"{len(rewards)} rewards do not split into groups of {group_size}.")
    best = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        best.append(start + max(range(group_size), key=lambda i: (group[i], -i)))
    return best


@dataclass
class SideBySide:
    """Samples of several models for the same prompts, and per-model summaries.

    rows: one dict per shown sample: prompt, prompt_index, group, model, sample, response,
    reward (None without a reward), judges {name: raw score} (with judges), and with best_of:
    best_of, mean_of_n, candidate_rewards. summary: {"models": {model: {...}}, ...}."""

    models: list[str]
    prompts: list[str]
    groups: list[str | None] | None
    rows: list[dict]
    summary: dict
    n: int
    best_of: int | None = None
    reward: str | None = None  # the reward's description
    reward_output: str | None = None  # score, probability, logit or logit_diff
    judges: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- prompts ----------------------------------------------------------------------------------

# --- sampling and scoring ---------------------------------------------------------------------

def scorers(cfg, *, reward: str | None = None, label: str | None = None, flip: bool = False, device: str = "auto",
            need_reward: bool = False) -> tuple[Callable | None, dict[str, Callable], list[str]]:
    """(reward function or None, gold judges by name, notes) for a `Config`.

    The reward: `reward` (a source build_reward takes) with the config's other reward_fn settings
    (reward_fn.output=probability scores a labels reward model by P(positive)),
    else reward_fn.source, else the run's reward model (<runs_dir>/<name>/reward) where one was
    trained; else None and a note saying so (RlhfLabError instead when `need_reward`, as best-of-n
    does). `label` and `flip` apply on top. Judges: evaluate.gold, raw scores (not calibrated)."""
    from dataclasses import replace

    from rlhflab.engine.runtime import resolve_device
    from rlhflab.eval.gold import build_gold
    from rlhflab.models.reward_model import reward_model_dir
    from rlhflab.rewards import build_reward

    reward_cfg = cfg.reward_fn
    if reward:  # a new source; the config's kind and output still apply (both auto unless set)
        reward_cfg = replace(reward_cfg, source=reward)
    reward_cfg = replace(reward_cfg, label=label or reward_cfg.label, flip=flip or reward_cfg.flip)
    default = Path(cfg.runs_dir) / cfg.name / "reward"
    default_source = str(default) if reward_model_dir(default) is not None else None
    notes = []
    if not (reward_cfg.source or default_source):
        if need_reward:
            raise RlhfLabError(f"--best-of needs a reward to pick the best sample by, and there is none ({default} "
                               f"holds no reward model): pass --reward (a reward run directory, a classifier or "
                               f"module:function).")
        notes.append(f"no reward to score with ({default} holds no reward model and reward_fn.source is unset); "
                     f"showing samples without scores. Pass --reward to score them.")
    device = resolve_device(device)
    fn = build_reward(reward_cfg, default_source=default_source, device=device) if not notes else None
    return fn, build_gold(cfg.evaluate.gold, reward_cfg, device=device), notes


def _scores(fn: Callable | None, prompts: list[str], responses: list[str]) -> list[float] | None:
    if fn is None:
        return None
    values = fn(prompts, responses)
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    return [float(v) for v in values]


def _mean(values: Sequence[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def check_request(models: Sequence[str], prompts: Sequence[str], groups, n: int, best_of: int | None,
                  max_new_tokens: int, temperature: float) -> None:
    """RlhfLabError for a request that cannot run (no models or prompts, n or best_of < 1, ...),
    so the CLI can say so before any model loads."""
    if not models:
        raise RlhfLabError("No models to sample from: pass at least one (--models M [M ...]).")
    seen = set()
    for model in models:
        if model in seen:
            raise RlhfLabError(f"The model {model!r} is listed twice; list each model once.")
        seen.add(model)
    if not prompts:
        raise RlhfLabError("No prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE.")
    if any(not p for p in prompts):
        raise RlhfLabError("A prompt is empty; a model needs at least one token to continue. Drop it or write some text.")
    if groups is not None and len(groups) != len(prompts):
        raise RlhfLabError(f"Got {len(groups)} groups for {len(prompts)} prompts; give one group per prompt.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RlhfLabError(f"-n (samples per prompt) must be at least 1, got {n!r}.")
    if best_of is not None and (isinstance(best_of, bool) or not isinstance(best_of, int) or best_of < 1):
        raise RlhfLabError(f"--best-of must be at least 1, got {best_of!r}.")
    if max_new_tokens < 1:
        raise RlhfLabError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    if not temperature > 0:
        raise RlhfLabError(f"--temperature must be above 0, got {temperature}.")


def side_by_side(models: Sequence[str], prompts: Sequence[str], *, groups: Sequence[str | None] | None = None,
                 n: int = 4, best_of: int | None = None, reward: Callable | None = None,
                 judges: dict[str, Callable] | None = None, max_new_tokens: int = 24, temperature: float = 1.0,
                 seed: int = 0, device: str = "auto", mixed_precision: str = "auto", batch_size: int = 16,
                 progress: bool = False) -> SideBySide:
    """Sample `n` responses per prompt from each model (anything `load_causal_lm` takes) and score them.

    reward: a RewardFunction (or any fn(prompts, responses) -> scores); None shows unscored samples.
    judges: name -> extra scorer (e.g. gold judges), raw scores shown beside the reward.
    best_of=N: draw n·N samples per prompt and keep the highest-reward one of each N (needs a reward);
    the summary gives best_of_n_kl(N) nats, the KL of that policy to the model.
    Raises RlhfLabError for what a caller can get wrong (no prompts, n < 1, a model that does not load).
    """
    from tqdm.auto import tqdm

    from rlhflab.engine.runtime import Runtime

    models, prompts = list(models), list(prompts)
    groups = list(groups) if groups is not None and any(g is not None for g in groups) else None
    check_request(models, prompts, groups, n, best_of, max_new_tokens, temperature)
    if best_of is not None and reward is None:
        raise RlhfLabError("--best-of needs a reward to pick the best sample by: pass --reward (a reward run "
                           "directory, a classifier or module:function).")
    judges = dict(judges or {})
    draws = n * (best_of or 1)  # samples drawn per prompt and model
    # Prompt-major: a prompt's draws sit together, so a batch mostly holds one prompt (little padding)
    # and each consecutive run of best_of draws is one best-of group.
    repeated = [p for p in prompts for _ in range(draws)]
    runtime = Runtime.create(device, mixed_precision)
    rows: list[dict] = []
    per_model: dict[str, dict] = {}
    bar = tqdm(total=len(models), desc="generate", disable=not progress, dynamic_ncols=True)
    for name in models:
        responses = _sample(name, repeated, runtime, max_new_tokens=max_new_tokens, temperature=temperature,
                            seed=seed, batch_size=batch_size)
        scores = _scores(reward, repeated, responses)
        model_rows = _model_rows(name, prompts, groups, repeated, responses, scores, draws, best_of, judges)
        rows += model_rows
        per_model[name] = _model_summary(model_rows, reward, judges, best_of, scores, groups)
        bar.update(1)
    bar.close()
    description, output = _describe_reward(reward)
    summary = {"reward": description, "reward_output": output, "n": n, "best_of": best_of,
               "best_of_n_kl": best_of_n_kl(best_of) if best_of is not None else None,
               "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
               "judges": list(judges), "models": per_model}
    return SideBySide(models, prompts, groups, rows, summary, n, best_of, description, output, list(judges))


def _sample(name: str, repeated: list[str], runtime, *, max_new_tokens: int, temperature: float, seed: int,
            batch_size: int) -> list[str]:
    """One response per entry of `repeated` from model `name`, loaded for this call only."""
    import torch

    from rlhflab.eval.generate import generate
    from rlhflab.models.causal_lm import load_causal_lm

    model, tokenizer = load_causal_lm(name)
    try:
        model.to(runtime.device)
        generations = generate(model, tokenizer, repeated, max_new_tokens=max_new_tokens,
                               temperature=temperature, seed=seed, batch_size=batch_size,
                               autocast=runtime.autocast)
    finally:  # one model in memory at a time
        del model, tokenizer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return [g.response for g in generations]


def _model_rows(name: str, prompts: list[str], groups: list | None, repeated: list[str], responses: list[str],
                scores: list[float] | None, draws: int, best_of: int | None, judges: dict) -> list[dict]:
    """One row per kept sample (every sample, or the best of each best_of draws), with its reward and judges."""
    keep = select_best(scores, best_of) if best_of is not None else list(range(len(responses)))
    kept_prompts = [repeated[i] for i in keep]
    kept_responses = [responses[i] for i in keep]
    judged = {j: _scores(fn, kept_prompts, kept_responses) for j, fn in judges.items()}
    model_rows = []
    for k, index in enumerate(keep):
        p = index // draws
        row = {"prompt": prompts[p], "prompt_index": p, "group": groups[p] if groups else None, "model": name,
               "sample": (index % draws) // (best_of or 1), "response": responses[index],
               "reward": scores[index] if scores is not None else None}
        if best_of is not None:
            start = index - index % best_of
            candidates = scores[start:start + best_of]
            row |= {"best_of": best_of, "mean_of_n": _mean(candidates), "candidate_rewards": candidates}
        if judges:
            row["judges"] = {j: values[k] for j, values in judged.items()}
        model_rows.append(row)
    return model_rows


def _describe_reward(reward: Callable | None) -> tuple[str | None, str | None]:
    """(the reward's description, else its name; what it outputs) as the summary records them."""
    if reward is None:
        return None, None
    description = getattr(reward, "description", None)
    if description is None:
        description = getattr(reward, "__name__", type(reward).__name__)
    return description, getattr(reward, "output", "score")


def _stats(rows: list[dict], probability: bool, judges: dict) -> dict:
    rewards = [r["reward"] for r in rows if r["reward"] is not None]
    out: dict[str, Any] = {"samples": len(rows), "mean_reward": _mean(rewards)}
    if probability:
        out["share_above_half"] = _mean([float(v >= 0.5) for v in rewards])
    if judges:
        out["judges"] = {}
        for name, fn in judges.items():
            values = [r["judges"][name] for r in rows]
            judge = {"mean": _mean(values)}
            if hasattr(fn, "positive_rate"):
                judge["positive_rate"] = fn.positive_rate(values)
            out["judges"][name] = judge
    return out


def _model_summary(rows: list[dict], reward, judges: dict, best_of: int | None, scores, groups) -> dict:
    probability = reward is not None and getattr(reward, "output", None) == "probability"
    summary = _stats(rows, probability, judges)
    if best_of is not None:
        summary["mean_of_n"] = _mean(scores)  # every draw, not only the kept ones
        summary["drawn"] = len(scores)
        summary["best_of_n_kl"] = best_of_n_kl(best_of)
    if groups:
        order = list(dict.fromkeys(r["group"] or NO_GROUP for r in rows))
        summary["by_group"] = {g: _stats([r for r in rows if (r["group"] or NO_GROUP) == g], probability, judges)
                               for g in order}
    return summary


# --- output -----------------------------------------------------------------------------------

def to_json(result: SideBySide) -> str:
    """One JSON document: {"prompts", "groups", "models", "rows", "summary", "notes"}."""
    return json.dumps({"prompts": result.prompts, "groups": result.groups, "models": result.models, "rows": result.rows,
                       "summary": result.summary, "notes": result.notes}, indent=2, ensure_ascii=False)


def _number(value: float | None, width: int = 8) -> str:
    return f"{value + 0.0:{width}.3f}" if value is not None else f"{'-':>{width}}"  # + 0.0: no "-0.000"


def _fmt(value: float) -> str:
    return f"{value + 0.0:.3f}"


def _one_line(text: str) -> str:
    """Newlines shown as ⏎ so each sample stays one paragraph; tabs as spaces; other control
    characters escaped (\\x1b...), since a sample's escape codes must not drive the terminal."""
    out = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "\n":
            out.append(" ⏎ ")
        elif ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch) == "Cc":
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


def format_text(result: SideBySide, width: int | None = None) -> str:
    """A plain-text view: per prompt (under its group), each model's samples with their scores,
    wrapped to `width` columns (the terminal's, 100 when unknown) and cut after 3 lines; then a
    per-model summary."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    width = max(60, min(width, 160))
    best_of = result.best_of
    score_names = []
    if result.reward is not None:
        score_names = ["best" if best_of else "reward"] + ([f"mean/{best_of}"] if best_of else [])
    score_names += result.judges
    columns = "".join(f"{name[:8]:>9}" for name in score_names)
    indent = 4 + len(columns) + (2 if columns else 0)
    text_width = max(20, width - indent)
    lines: list[str] = []
    if result.reward is not None:
        lines.append(f"reward: {result.reward}" + (f"  (best of {best_of} per sample, "
                                                      f"KL bound {best_of_n_kl(best_of):.3f} nats)" if best_of else ""))
    if result.judges:
        lines.append(f"judges: {', '.join(result.judges)} (raw scores, not calibrated)")
    by_prompt: dict[tuple[int, str], list[dict]] = {}
    for row in result.rows:
        by_prompt.setdefault((row["prompt_index"], row["model"]), []).append(row)
    order = list(range(len(result.prompts)))
    if result.groups:
        group_order = list(dict.fromkeys(g or NO_GROUP for g in result.groups))
        order = [i for g in group_order for i in order if (result.groups[i] or NO_GROUP) == g]
    current_group = None
    for i in order:
        group = (result.groups[i] or NO_GROUP) if result.groups else None
        if group is not None and group != current_group:
            lines += ["", f"=== {group} ".ljust(min(width, 72), "=")]
            current_group = group
        header = f"[{i + 1}/{len(result.prompts)}] {result.prompts[i]!r}"
        lines += ["", *textwrap.wrap(header, width, subsequent_indent="    ", max_lines=3, placeholder=" …")]
        if columns:
            lines.append(f"    {columns}")
        for model in result.models:
            lines.append(f"  {model}")
            for row in by_prompt.get((i, model), []):
                cells = ""
                if result.reward is not None:
                    cells += _number(row["reward"], 9) + (_number(row["mean_of_n"], 9) if best_of else "")
                cells += "".join(_number(row["judges"][j], 9) for j in result.judges)
                # Shown without its leading space (most continuations start with one); --json keeps it.
                wrapped = textwrap.wrap(_one_line(row["response"]).strip(), text_width, max_lines=3,
                                        placeholder=" …") or ["(empty)"]
                lines.append(f"    {cells}{'  ' if cells else ''}{wrapped[0]}")
                lines += [" " * indent + more for more in wrapped[1:]]
    lines += ["", *summary_lines(result)]
    return "\n".join(lines)


def summary_lines(result: SideBySide) -> list[str]:
    """The per-model summary table (and per group, when the prompts have groups)."""
    drawn = result.n * (result.best_of or 1)
    lines = [f"summary: {len(result.prompts)} prompt{'s' * (len(result.prompts) != 1)} × {result.n} sample"
             f"{'s' * (result.n != 1)} per model" + (f", each the best of {result.best_of} ({drawn} drawn per prompt)"
                                                    if result.best_of else "")]
    if result.reward is None:
        lines.append("  no reward: samples are not scored (pass --reward to score them)")
        if not result.judges:
            return lines
    probability = result.reward_output == "probability"
    head = ["model"]
    if result.reward is not None:
        head += ["best-of mean" if result.best_of else "mean reward"] + (["share>=0.5"] if probability else [])
        head += [f"mean of {result.best_of}", "KL bound"] if result.best_of else []
    head += result.judges
    table = []
    for model in result.models:
        s = result.summary["models"][model]
        cells = [model]
        if result.reward is not None:
            cells.append(_fmt(s['mean_reward']))
            if probability:
                cells.append(f"{100 * s['share_above_half']:.0f}%")
            if result.best_of:
                cells += [_fmt(s['mean_of_n']), f"{_fmt(s['best_of_n_kl'])} nats"]
        cells += [_fmt(s['judges'][j]['mean']) for j in result.judges]
        table.append(cells)
    lines += _table(head, table)
    if result.groups and result.reward is not None:
        lines += ["", "by group:"]
        head = ["model", "group", "samples", "mean reward"] + (["share>=0.5"] if probability else []) + result.judges
        table = []
        for model in result.models:
            for group, s in result.summary["models"][model]["by_group"].items():
                cells = [model, group, str(s["samples"]), _fmt(s['mean_reward'])]
                if probability:
                    cells.append(f"{100 * s['share_above_half']:.0f}%")
                cells += [_fmt(s['judges'][j]['mean']) for j in result.judges]
                table.append(cells)
        lines += _table(head, table)
    return lines


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned first column(s) of text, right-aligned numbers, two spaces between."""
    widths = [max(len(str(r[c])) for r in [head, *rows]) for c in range(len(head))]
    numeric = [c > 0 and all(_numberish(r[c]) for r in rows) for c in range(len(head))]

    def line(cells):
        return "  " + "  ".join(str(v).rjust(w) if num else str(v).ljust(w)
                                for v, w, num in zip(cells, widths, numeric)).rstrip()

    return [line(head), *(line(r) for r in rows)]


def _numberish(text: str) -> bool:
    try:
        float(text.split()[0].rstrip("%"))
        return True
    except (ValueError, IndexError):
        return False
