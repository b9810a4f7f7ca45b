"""The stages of a run, declared once: the config, the CLI, the pipeline, the staleness check and
the report read this list, and nothing else names the stages.

Each entry says what a stage is (its name, config section and what it does), what it reads
(the config values its output depends on, and this run's earlier stages it reads by default)
and how it is shown (its title, its one line after it runs, its rows in the report's overview
and its report section: rlhflab/eval/sections/<stage>.py), and the type of its summary.json
(rlhflab/summaries.py), which the stage writes and all of those read. Adding a stage is its
modules plus one entry here.

The entry's functions are named by "module:function" and imported on first call (`late`), so
this module stays a declaration: rlhflab.config and the CLI import it without torch or
matplotlib, and nothing it names imports back into it at import time.

A stage's key (`stage_key`) hashes the config values it reads and the fingerprints of every
local file, folder or earlier run they name (rlhflab/fingerprint.py), including the runs it
reads by default (RL reads this run's sft and reward stages unless told otherwise). The key is
written to the stage's stage.json when it finishes; a finished stage is up to date only while
the key computed now is the same.

A renamed stage (`RENAMED`: the RL stage was `ppo`) is still read under its old name: in
`stages:`, as a command, in `run:<stage>` references (`current_stage`), and as the folder of a run
made before the rename (`stage_dir`), which is read, resumed and rewritten where it is.
"""

from __future__ import annotations

import copy
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rlhflab.fingerprint import digest, fingerprint, references
from rlhflab.summaries import (
    DpoSummary,
    EvaluateSummary,
    IlqlSummary,
    OveroptSummary,
    PretrainSummary,
    RewardSummary,
    RlSummary,
    SftSummary,
    parse_summary,
    read_summary,
)

if TYPE_CHECKING:
    from rlhflab.config import Config


def late(target: str) -> Callable[..., Any]:
    """The function `target` ("package.module:function"), imported when first called: a stage's
    report section lives beside the report, its training code beside torch, and neither is
    imported to declare the stage."""
    module, _, name = target.partition(":")

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = call.target = target  # target: what tests check resolves
    return call


def _no_rows(summary: Any, name: str) -> list[list[str]]:
    return []


def shown_by(module: str) -> dict[str, Callable[..., Any]]:
    """line, report_section and report_rows: the functions line, section and rows of `module`
    (rlhflab/eval/sections/<stage>.py), imported when first called."""
    return {"line": late(f"{module}:line"), "report_section": late(f"{module}:section"),
            "report_rows": late(f"{module}:rows")}


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    name: its command (`rlhflab <name>`), its folder (runs/<run>/<name>) and its key here.
    config_section: the config section holding its settings (`<config_section>.*`).
    inputs: the config keys its output depends on ("generation.max_new_tokens" picks one field).
    reads: this run's stages it reads when no source is configured (its upstream stages).
    doc: what it does, one line (its `--help`).
    title: its heading in the report and its row in the report's overview.
    line: its summary -> the pipeline's one line of numbers once it is done (a lookup error,
        e.g. KeyError, for a summary without them).
    report_section: (report Stage, run folder, Figures) -> its section's blocks.
    report_rows: (its summary, name) -> [stage, metric, before, after] rows of the report's
        headline table.
    compares: what before and after are in those rows, for the table's caption.
    tuned: it tunes the policy (evaluation compares it with the model it started from).
    runner: the module with run(cfg, runtime=, resume=, overwrite=, progress=) -> RunDir and
        format_summary(summary) -> str; rlhflab.stages.<name> unless given.
    figures: the prefix of the report figures its section draws (stale ones are deleted by it).
    summary: the type of its summary.json (rlhflab/summaries.py): what the stage writes and what
        line, report_rows, report_section (Stage.summary) and format_summary read; None: a dict.
    """

    name: str
    config_section: str
    inputs: tuple[str, ...]
    reads: Callable[[Config], list[str]]
    doc: str
    title: str
    line: Callable[[Any], str]
    report_section: Callable[..., list]
    report_rows: Callable[[Any, str], list[list[str]]] = _no_rows
    compares: str = ""
    tuned: bool = False
    runner: str = ""
    figures: str = ""
    summary: type | None = None

    @property
    def module(self):
        """The stage's module: run(cfg, resume=, overwrite=, progress=) -> RunDir, format_summary(summary)."""
        return importlib.import_module(self.runner or f"rlhflab.stages.{self.name}")

    @property
    def figure_prefix(self) -> str:
        return self.figures or f"{self.name}_"

    def read_summary(self, folder: Path):
        """The summary.json in `folder` (one of this stage's, on this machine) as its type."""
        return read_summary(folder, self.summary)

    def parse_summary(self, data, path: Path):
        """summary.json's data read from `path` (a handed run's, through eval/run_files.py) as its type."""
        return parse_summary(data, self.summary, path)


def policy_stage(cfg: Config) -> str:
    """The stage whose model RL starts from (and evaluation compares against) by default:
    sft, or pretrain in a pipeline without SFT (the Shakespeare preset)."""
    return "pretrain" if "sft" not in cfg.stages and "pretrain" in cfg.stages else "sft"


def _tuning_reads(section: str) -> Callable[[Config], list[str]]:
    """rl, dpo and ilql read their starting policy and the reward unless both are configured."""
    return lambda cfg: [*([policy_stage(cfg)] if getattr(cfg, section).policy is None else []),
                        *(["reward"] if cfg.reward_fn.source is None else [])]


def tuned_stages(cfg: Config) -> list[str]:
    """The stages of this run that tune the policy (evaluation compares them with their start)."""
    return [name for name, stage in STAGES.items() if stage.tuned and name in cfg.stages] or ["rl"]


def _evaluate_reads(cfg: Config) -> list[str]:
    return [*([policy_stage(cfg), *tuned_stages(cfg)] if cfg.evaluate.models is None else []),
            *(["reward"] if cfg.reward_fn.source is None else [])]


def _overopt_reads(cfg: Config) -> list[str]:
    return [*(["rl"] if cfg.overopt.run is None else []), *(["reward"] if cfg.reward_fn.source is None else [])]


def _nothing(cfg: Config) -> list[str]:
    return []


SHOWN = "rlhflab.eval.sections"
TUNED = "each tuned policy at its start against its end"

# In the order a pipeline runs them.
STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("pretrain", "pretrain", ("seed", "runtime", "pretrain"), _nothing,
          "train a small causal LM from scratch on a corpus, with its own tokenizer", "Pretraining",
          late(f"{SHOWN}.pretrain:line"), late(f"{SHOWN}.pretrain:section"), summary=PretrainSummary),
    Stage("sft", "sft", ("seed", "runtime", "data", "sft"), _nothing, "supervised fine-tuning of a causal LM on reviews",
          "Supervised fine-tuning", **shown_by(f"{SHOWN}.sft"), compares="SFT against the base model",
          summary=SftSummary),
    Stage("reward", "reward", ("seed", "runtime", "data", "reward"), _nothing,
          "train a reward model on labelled texts or preference pairs", "Reward model", **shown_by(f"{SHOWN}.reward"),
          summary=RewardSummary),
    Stage("rl", "rl", ("seed", "runtime", "data", "reward_fn", "rl", "generation"), _tuning_reads("rl"),
          "online RL (PPO, GRPO, RLOO, REINFORCE++, Dr. GRPO: rl.algorithm) against the reward, with a KL penalty "
          "to the SFT model", "RL training", **shown_by(f"{SHOWN}.rl"),
          tuned=True, compares=TUNED, figures="ppo_", summary=RlSummary),
    Stage("dpo", "dpo", ("seed", "runtime", "data", "reward_fn", "dpo", "generation.max_new_tokens"), _tuning_reads("dpo"),
          "direct preference optimisation from preference pairs (a file, or on-policy pairs ranked by the reward)",
          "Direct preference optimisation", **shown_by(f"{SHOWN}.dpo"), tuned=True, compares=TUNED,
          summary=DpoSummary),
    Stage("ilql", "ilql", ("seed", "runtime", "data", "reward_fn", "ilql", "generation.max_new_tokens"), _tuning_reads("ilql"),
          "offline RL (implicit language Q-learning) from texts with rewards, e.g. reviews and their labels",
          "Offline RL (ILQL)", **shown_by(f"{SHOWN}.ilql"), tuned=True, compares=TUNED, summary=IlqlSummary),
    Stage("evaluate", "evaluate", ("seed", "runtime", "data", "reward_fn", "evaluate", "generation.max_new_tokens"),
          _evaluate_reads,
          "generate from SFT and the tuned models (PPO, DPO, ILQL; or any models) on held-out prompts and compare",
          "Evaluation", **shown_by(f"{SHOWN}.evaluate"), figures="eval_",
          compares="the evaluated models against the reference", summary=EvaluateSummary),
    Stage("overopt", "overopt", ("seed", "runtime", "data", "reward_fn", "evaluate", "overopt", "generation.max_new_tokens"),
          _overopt_reads,
          "over-optimisation study: proxy and gold rewards, KL and separator ratio at every RL snapshot",
          "Over-optimisation study", **shown_by(f"{SHOWN}.overopt"), summary=OveroptSummary),
)}


# A stage's old name -> its name now. The old name still works in `stages:`, as a command, in
# `run:<old>` and as the folder of a run made before the rename; stage keys keep it (stage_key).
RENAMED = {"ppo": "rl"}
_OLD_NAME = {new: old for old, new in RENAMED.items()}


def stage_folders() -> tuple[str, ...]:
    """The names a stage folder of a run may have: every stage's (read now: a test may register
    one) and the old names of renamed ones."""
    return (*STAGES, *RENAMED)


def current_stage(name: str, spelled: str = "{}") -> str:
    """`name`, or the stage it is the old name of, with a one-line note saying the new spelling
    (`spelled` with the name in it: "rlhflab {}", "run:{}", ...)."""
    if name not in RENAMED:
        return name
    from rlhflab.config import note_renamed  # at call time: rlhflab.config imports this declaration

    note_renamed(spelled.format(name), spelled.format(RENAMED[name]))
    return RENAMED[name]


def _present(folder: Path) -> bool:
    """A stage folder, finished, partial or a link (a sweep's), or the swap between them."""
    return any(os.path.lexists(folder.with_name(f"{prefix}{folder.name}{suffix}"))
               for prefix, suffix in (("", ""), ("", ".partial"), (".", ".old")))


def stage_dir(run_root: Path, name: str) -> Path:
    """Stage `name`'s folder in the run folder `run_root`: run_root/name, or, for a renamed stage
    of a run made before the rename (only the old folder there), run_root/<old name>: read,
    resumed and rewritten in place, never moved (one note says so)."""
    folder = Path(run_root) / name
    old = folder.with_name(_OLD_NAME.get(name, name))
    if old == folder or _present(folder) or not _present(old):
        return folder
    from rlhflab.config import note_once

    note_once(str(old), f"{old} is this run's {name} stage from before it was renamed {name!r}; it is used "
                        f"where it is (new runs write {folder}).")
    return old


def _pick(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


# (section, key) -> the default of a setting added after runs were made without it: at that value it
# is left out of the key, so those runs stay up to date (they did what the default does).
ADDED_LATER = {("dpo", "rounds"): 1, ("dpo", "reference"): "start", ("ilql", "top_k"): 0,
               ("ilql", "q_target"): "td", ("dpo", "nll_coef"): 0.0,
               ("ilql", "on_policy"): {"prompts": 1200, "samples_per_prompt": 2, "max_new_tokens": None,
                                       "temperature": 1.0, "batch_size": 32},
               ("dpo", "on_policy.pairing"): "best_worst",  # a dotted name: a setting inside a subsection
               ("rl", "lr_schedule"): "constant", ("rl", "value_warmup_steps"): 0}


def _later_settings(out: dict[str, Any]):
    """(the dict holding it, its name, its default) of each setting added later (ADDED_LATER) whose
    section is in `out`; the dicts on the way down are copies, so `out`'s caller keeps theirs."""
    for (section, name), default in ADDED_LATER.items():
        *parents, leaf = [section, *name.split(".")]
        tree = out
        for part in parents:
            if not isinstance(tree.get(part), dict):
                break
            tree[part] = dict(tree[part])
            tree = tree[part]
        else:
            yield tree, leaf, default


def without_later_defaults(inputs: dict[str, Any]) -> dict[str, Any]:
    """{section: settings} with every setting added later left out where it is at its default: a run
    made before the setting existed and one made at its default then hash alike."""
    out = dict(inputs)
    for tree, leaf, default in _later_settings(out):
        if leaf in tree and tree[leaf] == default:
            del tree[leaf]
    return out


def with_later_defaults(inputs: dict[str, Any]) -> dict[str, Any]:
    """{section: settings} with every setting added later filled in at its default where a run made
    before it existed lacks it (such a run did what the default does)."""
    out = dict(inputs)
    for tree, leaf, default in _later_settings(out):
        tree.setdefault(leaf, copy.deepcopy(default))
    return out


def hashed_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs under the names their keys were first written with, so that renaming a section
    leaves finished runs up to date: rl + generation were one ppo section, and
    generation.max_new_tokens was ppo.max_new_tokens (every generation setting was a ppo one);
    settings added later (ADDED_LATER) are left out at their defaults."""
    out = without_later_defaults(inputs)  # settings added later hash only when set
    if "rl" in out:
        out["ppo"] = {**out.pop("rl"), **(out.pop("generation", None) or {})}
    if "generation.max_new_tokens" in out:
        out["ppo.max_new_tokens"] = out.pop("generation.max_new_tokens")
    return out


def stage_key(cfg: Config, name: str) -> dict:
    """{"key": hash, "references": {reference: fingerprint}} of stage `name` under `cfg` as things are now."""
    from rlhflab.config import to_dict  # at call time: rlhflab.config imports this declaration

    stage = STAGES[name]
    tree = to_dict(cfg)
    inputs = hashed_inputs({key: _pick(tree, key) for key in stage.inputs})
    refs = references(inputs)
    for upstream in stage.reads(cfg):  # by stage name, so a moved runs folder stays up to date
        refs[_own_reference(upstream)] = fingerprint(str(stage_dir(Path(cfg.runs_dir) / cfg.name, upstream))) or "missing"
    return {"key": digest({"inputs": inputs, "references": refs}), "references": refs}


def _own_reference(stage: str) -> str:
    """stage.json's name for this run's own stage `stage` as an input: under the name the key was first
    written with, so that renaming a stage leaves runs up to date."""
    return f"<this run>/{_OLD_NAME.get(stage, stage)}"


def recorded_input(stage_json: Any, configured: Any, own: str) -> str | None:
    """The fingerprint a finished stage's stage.json (`stage_json`, as read) recorded for one of its inputs
    when it ran ("run:<run id>" of a run folder, a file's hash): the one named `configured` (the config's
    path for it), or this run's own stage `own` when that is None. None when none was recorded (a run from
    before stage.json had them). Readers of handed runs identify inputs by it instead of opening the path."""
    references = stage_json.get("references") if isinstance(stage_json, dict) else None
    key = configured if isinstance(configured, str) and configured else _own_reference(own)
    found = references.get(key) if isinstance(references, dict) else None
    return found if isinstance(found, str) else None
