"""The stages of a run, declared once: the CLI, the pipeline and the staleness check read this list.

A stage's key (`stage_key`) hashes the config values it reads and the fingerprints of every
local file, folder or earlier run they name (rlhflab/fingerprint.py), including the runs it
reads by default (PPO reads this run's sft and reward stages unless told otherwise). The key is
written to the stage's stage.json when it finishes; a finished stage is up to date only while
the key computed now is the same.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlhflab.config import Config, to_dict
from rlhflab.fingerprint import digest, fingerprint, references


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]  # config keys its output depends on ("ppo.max_new_tokens" picks one field)
    reads: Callable[[Config], list[str]]  # this run's stages it reads when no source is configured
    doc: str

    @property
    def module(self):
        """rlhflab.stages.<name>: run(cfg, resume=, overwrite=, progress=) -> RunDir, format_summary(summary)."""
        return importlib.import_module(f"rlhflab.stages.{self.name}")


def policy_stage(cfg: Config) -> str:
    """The stage whose model RL starts from (and evaluation compares against) by default:
    sft, or pretrain in a pipeline without SFT (the Shakespeare preset)."""
    return "pretrain" if "sft" not in cfg.stages and "pretrain" in cfg.stages else "sft"


def _tuning_reads(section: str) -> Callable[[Config], list[str]]:
    """ppo, dpo and ilql read their starting policy and the reward unless both are configured."""
    return lambda cfg: [*([policy_stage(cfg)] if getattr(cfg, section).policy is None else []),
                        *(["reward"] if cfg.reward_fn.source is None else [])]


def tuned_stages(cfg: Config) -> list[str]:
    """The stages of this run that tune the policy (evaluation compares them with their start)."""
    return [name for name in ("ppo", "dpo", "ilql") if name in cfg.stages] or ["ppo"]


def _evaluate_reads(cfg: Config) -> list[str]:
    return [*([policy_stage(cfg), *tuned_stages(cfg)] if cfg.evaluate.models is None else []),
            *(["reward"] if cfg.reward_fn.source is None else [])]


def _overopt_reads(cfg: Config) -> list[str]:
    return [*(["ppo"] if cfg.overopt.run is None else []), *(["reward"] if cfg.reward_fn.source is None else [])]


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("pretrain", ("seed", "runtime", "pretrain"), lambda cfg: [],
          "train a small causal LM from scratch on a corpus, with its own tokenizer"),
    Stage("sft", ("seed", "runtime", "data", "sft"), lambda cfg: [], "supervised fine-tuning of a causal LM on reviews"),
    Stage("reward", ("seed", "runtime", "data", "reward"), lambda cfg: [], "train a reward model on labelled texts or preference pairs"),
    Stage("ppo", ("seed", "runtime", "data", "reward_fn", "ppo"), _tuning_reads("ppo"), "PPO against the reward, with a KL penalty to the SFT model"),
    Stage("dpo", ("seed", "runtime", "data", "reward_fn", "dpo", "ppo.max_new_tokens"),
          _tuning_reads("dpo"),
          "direct preference optimisation from preference pairs (a file, or on-policy pairs ranked by the reward)"),
    Stage("ilql", ("seed", "runtime", "data", "reward_fn", "ilql", "ppo.max_new_tokens"),
          _tuning_reads("ilql"),
          "offline RL (implicit language Q-learning) from texts with rewards, e.g. reviews and their labels"),
    Stage("evaluate", ("seed", "runtime", "data", "reward_fn", "evaluate", "ppo.max_new_tokens"), _evaluate_reads,
          "generate from SFT and the tuned models (PPO, DPO, ILQL; or any models) on held-out prompts and compare"),
    Stage("overopt", ("seed", "runtime", "data", "reward_fn", "evaluate", "overopt", "ppo.max_new_tokens"), _overopt_reads,
          "over-optimisation study: proxy and gold rewards, KL and separator ratio at every RL snapshot"),
)}


def _pick(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def stage_key(cfg: Config, name: str) -> dict:
    """{"key": hash, "references": {reference: fingerprint}} of stage `name` under `cfg` as things are now."""
    stage = STAGES[name]
    tree = to_dict(cfg)
    inputs = {key: _pick(tree, key) for key in stage.inputs}
    refs = references(inputs)
    for upstream in stage.reads(cfg):  # by stage name, so a moved runs folder stays up to date
        refs[f"<this run>/{upstream}"] = fingerprint(str(Path(cfg.runs_dir) / cfg.name / upstream)) or "missing"
    return {"key": digest({"inputs": inputs, "references": refs}), "references": refs}
