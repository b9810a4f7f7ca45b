"""Pieces every stage uses: the data splits, the run directory, resume checks."""

from __future__ import annotations

from pathlib import Path

from rlhflab.config import Config, DataConfig, dump_yaml, parse_yaml, to_dict
from rlhflab.errors import RlhfLabError
from rlhflab.io import RunDir, atomic_write_text


def load_splits(cfg: Config, data: DataConfig | None = None, *, require_labels: bool = False):
    """Reviews of `data` (default `cfg.data`): balanced by label unless per_class is None, split by seed."""
    from rlhflab.data import balanced_sample, load_reviews, split_reviews

    data = data or cfg.data
    reviews = load_reviews(
        data.source,
        text_column=data.text_column,
        label_column=data.label_column,
        split=data.split,
        require_labels=require_labels or data.per_class is not None,
    )
    if data.per_class is not None:
        reviews = balanced_sample(reviews, data.per_class, cfg.seed)
    return split_reviews(reviews, data.fractions, cfg.seed)


def open_run_dir(cfg: Config, stage: str, *, resume: bool, overwrite: bool) -> RunDir:
    """Create `runs/<name>/<stage>` and record the config; on resume, insist it is unchanged."""
    run_dir = RunDir(Path(cfg.runs_dir) / cfg.name / stage)
    run_dir.prepare(resume=resume, overwrite=overwrite)
    config_path = run_dir.path / "config.yaml"
    if resume and config_path.exists():
        before = parse_yaml(config_path.read_text(encoding="utf-8"))
        if before != to_dict(cfg):
            changed = sorted(_diff_keys(before, to_dict(cfg)))
            raise RlhfLabError(
                f"The config differs from the one that started {run_dir.path} ({', '.join(changed[:5])}). "
                f"Resume with the same config, or start again with --overwrite."
            )
    atomic_write_text(config_path, dump_yaml(cfg))
    return run_dir


def _diff_keys(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}

