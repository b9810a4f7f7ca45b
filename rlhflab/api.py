"""The Python API: one call trains a model from prompts and a reward function (online RL), from
scored texts (ILQL, offline) or from preference pairs (DPO), as trlX's `trlx.train` does.

    import rlhflab
    result = rlhflab.train(model="smollm2-135m", prompts=[...], reward_fn=lambda samples, prompts, outputs: [...])
    result.model, result.tokenizer, result.summary, result.run_dir

It runs the same registered stage as the CLI (rlhflab/stages/), on the same config, in this
process: in a notebook (tqdm.auto draws its widgets), in a script, or under `accelerate launch`
(every process calls it; the main one writes). In-memory inputs are written to
<run>/inputs/*.jsonl first, so the run directory says what it was trained on.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, MappingView, Set as AbstractSet
from typing import Any, Callable, Mapping, Sequence

from rlhflab.algorithms.recipes import ALGORITHM_NAMES
from rlhflab.config import Config, check_config, from_dict, load_config, resolve_run_references, to_dict, upgrade_names
from rlhflab.errors import RlhfLabError
from rlhflab.stages.registry import stage_dir

TRLX_PARAMETERS = ("samples", "prompts", "outputs")  # trlX calls reward_fn(samples=, prompts=, outputs=, tokenizer=)


@dataclass
class TrainResult:
    model: Any  # the trained causal LM (an ILQL model steers its generation by its saved beta)
    tokenizer: Any
    summary: dict  # the stage's summary.json
    run_dir: Path  # runs/<name>/<stage>
    algorithm: str

    def __repr__(self) -> str:  # not the whole model and tokenizer, as the default would print
        return (f"TrainResult(algorithm={self.algorithm!r}, run_dir={str(self.run_dir)!r}, "
                f"model={type(self.model).__name__}, steps={self.summary.get('steps')})")


def train(model: str | None = None, *, prompts: Sequence[str] | None = None, eval_prompts: Sequence[str] | None = None,
          reward_fn: Callable | None = None, samples: Sequence[str] | None = None, rewards: Sequence[float] | None = None,
          pairs: Sequence[Mapping[str, str]] | None = None, config: Config | Mapping | str | Path | None = None,
          name: str | None = None, progress: bool = True) -> TrainResult:
    """Train `model` (a bundled name, hub id, folder or run directory) and return it.

    - `prompts` + `reward_fn` -> online RL (`config` rl.algorithm: any recipe of
      rlhflab/algorithms/recipes.py, ppo by default; or "dpo" for DPO on pairs sampled from the
      model and ranked by reward_fn);
    - `samples` + `rewards` -> ILQL (offline: learns from the scored texts, samples nothing);
    - `pairs` (dicts with prompt, chosen, rejected) -> DPO.
    `reward_fn` may take trlX's parameters (samples, prompts, outputs, **kwargs) or rlhflab's
    (prompts, responses); it returns one number per sample. `eval_prompts` are answered before and
    after training. `config`: a Config, a YAML path, or nested dicts of settings ("rl" is the RL
    section; "ppo", its old name, is read as it). The run goes to <runs_dir>/<name>/<stage> (name:
    `name`, else the config's, else "api"); a finished stage of the same name is trained again.
    The lists may be any sequences: lists, tuples, numpy arrays, torch tensors, pandas Series (and
    a DataFrame for `pairs`), never a set or dict view (no order). Raises RlhfLabError, naming the
    argument and before anything is written, for inputs that are empty, all blank or do not fit
    together, or a reward_fn it cannot call; a call that fails before its stage has a checkpoint
    leaves no inputs files behind."""
    prompts, eval_prompts, samples = (_listed(v, what) for v, what in
                                      ((prompts, "prompts"), (eval_prompts, "eval_prompts"), (samples, "samples")))
    rewards, pairs = _listed(rewards, "rewards"), _listed(pairs, "pairs")
    _ordered(config, "config")
    cfg, algorithm = _config(config, name, reward_fn, samples, rewards, pairs, prompts)
    stage = "rl" if algorithm in ALGORITHM_NAMES else algorithm  # every online recipe trains in the RL stage
    cfg.stages = [stage]  # the run is this one stage (the report lists no others)
    section = getattr(cfg, stage)
    section.policy = model or section.policy or cfg.sft.model
    # Everything is checked before anything is written: a bad call leaves no trace.
    inputs = {"prompts": [{"prompt": _text(p, "prompts", i)} for i, p in enumerate(prompts or [])],
              "eval_prompts": [{"prompt": _text(p, "eval_prompts", i)} for i, p in enumerate(eval_prompts or [])],
              "samples": [{"text": _text(t, "samples", i), "reward": _number(r, i)} for i, (t, r) in enumerate(zip(samples or [], rewards or []))],
              "pairs": [_pair(p, i) for i, p in enumerate(pairs or [])]}
    for what, given in (("prompts", prompts), ("eval_prompts", eval_prompts), ("samples", samples), ("pairs", pairs)):
        _check_rows(what, given, inputs[what])
    if pairs is not None:  # the file reader's checks, here, so that a bad pair is named by its index
        from rlhflab.data.pairs import table_to_pairs
        from rlhflab.data.tables import table_from_rows

        table_to_pairs(table_from_rows(inputs["pairs"], "pairs", lambda i: f"pairs[{i}]"), section="dpo.pairs")
    if reward_fn is not None:
        cfg.reward_fn.source = register_reward(reward_fn)
    check_config(cfg)

    from rlhflab.engine.runtime import Runtime

    runtime = Runtime.create(cfg.runtime.device, cfg.runtime.mixed_precision)
    root = Path(cfg.runs_dir) / cfg.name / "inputs"
    made = [folder for folder in (root, root.parent, root.parent.parent) if not folder.exists()]  # removed again on failure
    written: list[Path] = []  # files this call created (not ones an earlier call left with the same content)
    try:
        if prompts is not None:
            cfg.data.prompts = _write_inputs(root, "prompts", inputs["prompts"], written)
        if eval_prompts is not None:
            cfg.data.eval_prompts = _write_inputs(root, "eval_prompts", inputs["eval_prompts"], written)
        if algorithm == "ilql":
            cfg.ilql.samples = _write_inputs(root, "samples", inputs["samples"], written)
        if pairs is not None:
            cfg.dpo.pairs.source = _write_inputs(root, "pairs", inputs["pairs"], written)
        runtime.barrier()  # the main process wrote the inputs the others are about to read
        if not progress:  # transformers' own bars (loading and writing weights) too
            from transformers.utils import logging

            logging.disable_progress_bar()

        from rlhflab.stages.common import run_stage

        run_dir = run_stage(stage, cfg, runtime=runtime, overwrite=True, progress=progress)
    except BaseException:
        _forget_inputs(written, made, Path(cfg.runs_dir) / cfg.name, stage)
        raise

    from rlhflab.io import read_json
    from rlhflab.models.causal_lm import load_causal_lm

    trained, tokenizer = load_causal_lm(str(run_dir.path))
    return TrainResult(trained, tokenizer, read_json(run_dir.summary_path), run_dir.path, algorithm)


def _config(config, name, reward_fn, samples, rewards, pairs, prompts) -> tuple[Config, str]:
    """The Config to run and the algorithm the inputs ask for."""
    chosen, online_settings = None, set()
    if isinstance(config, Config):
        cfg = from_dict(Config, to_dict(config))  # a copy: the caller's object is not changed
    elif isinstance(config, (str, Path)):
        cfg = load_config(config)
    elif config is None or isinstance(config, Mapping):
        # A deep copy of plain data, old names (ppo:, ppo.max_new_tokens) under the current ones.
        raw = upgrade_names(json.loads(json.dumps(dict(config or {}), default=_plain)))
        raw.setdefault("name", "api")
        chosen = raw["rl"].get("algorithm") if isinstance(raw.get("rl"), dict) else None
        if chosen in ("dpo", "ilql"):  # trlX-style {"rl": {"algorithm": ...}}: the stage, not an rl setting
            del raw["rl"]["algorithm"]
        online_settings = set(raw.get("rl") or {}) - {"algorithm"}  # what DPO and ILQL would ignore
        cfg = from_dict(Config, raw)
    else:
        raise RlhfLabError(f"config must be a Config, a YAML path or a dict of settings, got {type(config).__name__}.")
    if name is not None:
        cfg.name = name
        Config.__post_init__(cfg)  # the name check
    cfg = resolve_run_references(cfg)

    offline = samples is not None or rewards is not None
    if offline and (samples is None or rewards is None or len(samples) != len(rewards)):
        raise RlhfLabError("ILQL needs samples and rewards of the same length (one reward per sample); got "
                           f"{_count(samples, 'sample')} and {_count(rewards, 'reward')}.")
    given = [what for what, present in (("samples/rewards", offline), ("pairs", pairs is not None)) if present]
    if len(given) > 1:
        raise RlhfLabError("Give one kind of training data: samples + rewards (ILQL) or pairs (DPO), not both.")
    if chosen == "ilql" and not offline:
        raise RlhfLabError("ILQL learns from scored texts: give samples and rewards.")
    if not offline and pairs is None and (prompts is None or reward_fn is None):
        raise RlhfLabError("Nothing to train on: give prompts and a reward_fn (online RL), samples and rewards (ILQL), "
                           "or pairs (DPO).")
    algorithm = "ilql" if offline else "dpo" if pairs is not None else chosen or cfg.rl.algorithm
    if algorithm in ("dpo", "ilql") and online_settings:
        raise RlhfLabError(f"config's rl settings {', '.join(sorted(online_settings))} are online RL's, and this call "
                           f"trains {algorithm.upper()}: set them in the {algorithm!r} section (e.g. {algorithm}.learning_rate, "
                           f"{algorithm}.max_steps, {algorithm}.epochs).")
    return cfg, algorithm


def adapt_reward_fn(fn: Callable) -> Callable[[list[str], list[str]], Any]:
    """fn(prompts, responses) for a reward function written for trlX (samples, prompts, outputs,
    **kwargs; samples = prompt + output) or for rlhflab (prompts, responses), told apart by its
    parameter names. Raises RlhfLabError when neither fits."""
    from rlhflab.data.records import join_prompt_response

    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        raise RlhfLabError(f"reward_fn {fn!r} is not a function whose parameters can be read.") from None
    names = [p.name for p in parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    var_keyword = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    if names[:2] == ["prompts", "responses"]:
        return lambda prompts, responses: fn(prompts, responses)
    if names and names[0] == "samples" or any(n in names for n in ("outputs",)):
        accepted = [n for n in (*TRLX_PARAMETERS, "tokenizer") if n in names or var_keyword]

        def trlx(prompts: list[str], responses: list[str]):
            values = {"samples": [join_prompt_response(p, r) for p, r in zip(prompts, responses)], "prompts": prompts,
                      "outputs": responses, "tokenizer": None}
            return fn(**{n: values[n] for n in accepted})

        return trlx
    shown = ", ".join(names) or "none"
    raise RlhfLabError(f"reward_fn's parameters ({shown}) fit neither trlX's reward_fn(samples, prompts, outputs, **kwargs) "
                       f"nor rlhflab's fn(prompts, responses); name them one of those ways.")


def register_reward(fn: Callable) -> str:
    """Make an in-memory reward function reachable as a reward source ("module:function"), as the
    stages load rewards by name. Each process of a multi-process run registers its own."""
    from rlhflab import _api_rewards

    adapted = adapt_reward_fn(fn)
    label = getattr(fn, "__qualname__", type(fn).__name__)
    readable = "".join(c if c.isalnum() else "_" for c in label).strip("_") or "reward"  # "<lambda>" -> "lambda"
    key = f"{readable}_" + hashlib.sha256(f"{getattr(fn, '__module__', '')}.{label}.{id(fn)}".encode()).hexdigest()[:8]
    adapted.__name__ = adapted.__qualname__ = key
    adapted.__doc__ = f"reward_fn {label} passed to rlhflab.train"
    setattr(_api_rewards, key, adapted)
    return f"{_api_rewards.__name__}:{key}"


def _plain(value: Any) -> Any:
    """A numpy scalar or array, or a torch tensor, in a config dict as plain numbers and lists
    (json.dumps's `default`); anything else is an RlhfLabError naming its type."""
    if hasattr(value, "tolist") and not isinstance(value, (AbstractSet, MappingView)):
        return value.tolist()
    raise RlhfLabError(f"config holds a {type(value).__name__} ({value!r:.40}); settings are numbers, strings, "
                       f"booleans, lists and dicts.")


def _listed(value: Any, what: str) -> list | None:
    """`value` as a plain list (None stays None): numpy arrays, tensors and pandas Series via
    tolist(), a DataFrame as its rows; one string is refused, as it would be read letter by letter,
    and so is an unordered container (set, dict view), whose order would not match its partner's."""
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, (str, bytes)):
        raise RlhfLabError(f"{what} must be a list, not one string; wrap it in a list: {what}=[{value!r:.40}].")
    if isinstance(value, Mapping):
        raise RlhfLabError(f"{what} must be a list, not a dict; give a list of {what}.")
    _ordered(value, what)
    if isinstance(value, Iterator):  # a generator, map(), iter(): read once, and maybe drawn from a set
        raise RlhfLabError(f"{what} is an iterator ({type(value).__name__}), which may have no order and is read "
                           f"only once; give a list in the order you mean, e.g. {what}=list(...).")
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame: its rows
        return value.to_dict("records")
    if hasattr(value, "tolist"):
        listed = value.tolist()
        if not isinstance(listed, list):  # a 0-d array around one object, e.g. np.array({1.0, 0.0}) holds a set
            _ordered(listed, what)
            raise RlhfLabError(f"{what} is a 0-dimensional array of {type(listed).__name__}; give a list.")
        return listed
    try:
        return list(value)
    except TypeError:
        raise RlhfLabError(f"{what} must be a list, got {value!r:.40} ({type(value).__name__}).") from None


def _ordered(value: Any, what: str) -> None:
    """RlhfLabError for a set, frozenset or dict view in `value` (or nested in a config dict or
    list): its iteration order is arbitrary, so rewards would be paired with the wrong samples and
    settings lists read in no fixed order."""
    if isinstance(value, (AbstractSet, MappingView)):
        kind = type(value).__name__
        raise RlhfLabError(f"{what} is a {kind}, which has no order (its items could be paired with the wrong "
                           f"others); give a list in the order you mean, e.g. {what}=[...].")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _ordered(item, f"{what}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _ordered(item, f"{what}[{index}]")


def _check_rows(what: str, given: list | None, rows: list[dict]) -> None:
    """An empty argument, or one whose texts are all blank, named as the caller wrote it (before
    any file is written: the stage's reader would name the internal inputs file instead)."""
    if given is None:
        return
    if not rows:
        raise RlhfLabError(f"{what} is empty; give at least one.")
    if what in ("prompts", "eval_prompts") and not any(row["prompt"].strip() for row in rows):
        # the rule of rlhflab.data.prompts.load_prompts, which skips blank prompts
        raise RlhfLabError(f"{what} holds no prompt with text ({_all_blank(rows)}); give at least one prompt with words "
                           "in it.")
    if what == "samples":
        from rlhflab.data.sources import cell_text
        from rlhflab.data.tables import table_from_rows

        table = table_from_rows(rows, "samples", lambda i: f"samples[{i}]")
        if not any(cell_text(text, table, i, "text") for i, text in enumerate(table.data["text"])):
            # ilql.samples' reader leaves out rows without text, and refuses a file with none
            raise RlhfLabError(f"samples holds no text ({_all_blank(rows)}); give at least one sample with words in it.")


def _all_blank(rows: list) -> str:
    return "the one given is empty or only spaces" if len(rows) == 1 else f"all {len(rows)} are empty or only spaces"


def _forget_inputs(written: list[Path], made: list[Path], run_root: Path, stage: str) -> None:
    """After a failed call: remove the inputs this call wrote unless a stage folder (a resumable
    `<stage>.partial`, or a finished one) names them in its config.yaml, then the folders it made
    if that leaves them empty."""
    import contextlib

    if not written:  # other processes write nothing, and an earlier call's files are not ours to remove
        return
    final = stage_dir(run_root, stage)  # an old run's RL folder keeps its name (ppo)
    configs = [folder / "config.yaml" for folder in (final, final.with_name(f"{final.name}.partial"))]
    named = "".join(c.read_text(encoding="utf-8", errors="replace") for c in configs if c.is_file())
    for path in written:
        if str(path) not in named:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    for folder in made:  # innermost first
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: whatever else is there by now stays


def _count(items: list | None, noun: str) -> str:
    n = 0 if items is None else len(items)
    return f"{n or 'no'} {noun}{'s' * (n != 1)}"


def _text(value: Any, what: str, index: int) -> str:
    if not isinstance(value, str):
        raise RlhfLabError(f"{what} must be strings; {what}[{index}] is {value!r:.60} ({type(value).__name__}).")
    return value


def _number(value: Any, index: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, (bool, str)) or not math.isfinite(number):
        raise RlhfLabError(f"rewards must be finite numbers; rewards[{index}] is {value!r:.60}.")
    from rlhflab.data.scored import reward_problem

    problem = reward_problem(number)  # as the samples reader checks them: in float32
    if problem is not None:
        raise RlhfLabError(f"rewards[{index}] is {value!r:.60}: {problem}.")
    return number


def _pair(pair: Any, index: int) -> dict:
    if not isinstance(pair, Mapping) or not {"chosen", "rejected"} <= set(pair):
        raise RlhfLabError(f"pairs[{index}] must be a dict with 'chosen' and 'rejected' (and a 'prompt'); got {pair!r:.80}.")
    return {"prompt": _text(pair.get("prompt", ""), "pair prompts", index),
            "chosen": _text(pair["chosen"], "chosen responses", index),
            "rejected": _text(pair["rejected"], "rejected responses", index)}


def _write_inputs(root: Path, stem: str, rows: list[dict], written: list[Path]) -> str:
    """`root/<stem>-<hash of the rows>.jsonl`, written atomically by the main process (the others read
    the same file after a barrier), and its path; a file it creates is appended to `written`.
    Named by content: a later call never rewrites the file a finished run was trained from."""
    import os

    from rlhflab.io import write_jsonl

    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]
    path = root / f"{stem}-{digest}.jsonl"
    if os.environ.get("RANK", "0") == "0" and not path.exists():  # RANK: set by accelerate launch / torchrun
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, rows)
        written.append(path)
    return str(path)
